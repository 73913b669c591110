"""headwater.data: every TRL preference format from every container, ids, bad rows, writers."""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.data import (
    MalformedRowError,
    PreferenceDataset,
    PreferenceDataWarning,
    PreferencePair,
    extract_prompt,
    load_preferences,
    make_pair,
    pair_id,
    save_preferences,
)

try:  # TRL is an optional extra (`trl`); the comparisons with it skip without it.
    import trl.data_utils as trl_data_utils
except ImportError:
    trl_data_utils = None
needs_trl = pytest.mark.skipif(trl_data_utils is None, reason="needs TRL (the `trl` extra)")

datasets.disable_progress_bars()

# ---------------------------------------------------------------------------------------------
# The reference content: three pairs, each with a data-source column. Responses begin with a
# space and with different first words, so an implicit prompt splits back exactly here.

STANDARD = [
    {"prompt": "How do I bake bread?", "chosen": " Mix flour and water.", "rejected": " I cannot help.", "origin": "web"},
    {"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Lyon, probably.", "origin": "quiz"},
    {"prompt": "Answer without commas: hi", "chosen": " Good day to you", "rejected": " Hi, there", "origin": "web"},
]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


CONVERSATIONAL = [
    {"prompt": _user(r["prompt"]), "chosen": _assistant(r["chosen"].strip()), "rejected": _assistant(r["rejected"].strip()), "origin": r["origin"]}
    for r in STANDARD
]
# A multi-turn prompt, so the implicit split has more than one shared message to find.
CONVERSATIONAL[1]["prompt"] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
]


def _implicit(rows: list[dict]) -> list[dict]:
    """The same pairs with the prompt folded into chosen and rejected (no prompt column)."""
    return [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"], "origin": r["origin"]}
        for r in rows
    ]


CONTENT = {"standard": STANDARD, "conversational": CONVERSATIONAL}


# Writers for every container a user may hand us.


def _write_jsonl(rows: list, path: Path) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_json_array(rows: list, path: Path) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def _write_parquet(rows: list, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_hf_dir(rows: list, path: Path) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def _write_hf_dict_dir(rows: list, path: Path) -> Path:
    pad = [{**rows[0], "origin": "other split"}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(pad)}
    ).save_to_disk(str(path))
    return path


CONTAINERS = {
    "jsonl": (_write_jsonl, {}),
    "json_array": (_write_json_array, {}),
    "parquet": (_write_parquet, {}),
    "hf_dir": (_write_hf_dir, {}),
    "hf_dict_dir": (_write_hf_dict_dir, {"split": "train"}),
    "hf_memory": (lambda rows, path: datasets.Dataset.from_list(rows), {}),
    "hf_dict_memory": (lambda rows, path: datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}), {}),
    "list": (lambda rows, path: rows, {}),
}


def _load(container: str, rows: list, tmp_path: Path, **kwargs) -> PreferenceDataset:
    write, extra = CONTAINERS[container]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return load_preferences(write(rows, tmp_path / "data"), **extra, **kwargs)


def _expected_ids(rows: list[dict]) -> list[str]:
    return [pair_id(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


# ---------------------------------------------------------------------------------------------
# Every format × explicit/implicit prompt × container


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("prompt_mode", ["explicit", "implicit"])
@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_every_format_and_container_gives_the_same_pairs(fmt, prompt_mode, container, tmp_path):
    reference = CONTENT[fmt]
    rows = reference if prompt_mode == "explicit" else _implicit(reference)
    ds = _load(container, rows, tmp_path)

    assert len(ds) == len(reference)
    assert ds.skipped == []
    assert ds.conversational is (fmt == "conversational")
    for i, (pair, expected) in enumerate(zip(ds, reference)):
        assert (pair.prompt, pair.chosen, pair.rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])
        assert pair.metadata == {"origin": expected["origin"]}
        assert pair.row == i
        assert pair.conversational is (fmt == "conversational")
    # Same content, same ids: across containers and whether the prompt was explicit or implicit.
    assert ds.ids == _expected_ids(reference)


def test_ids_and_fingerprint_are_identical_across_file_formats(tmp_path):
    fingerprints = set()
    for container in CONTAINERS:
        for rows in (CONVERSATIONAL, _implicit(CONVERSATIONAL)):
            ds = _load(container, rows, tmp_path / f"{container}-{'prompt' in rows[0]}")
            fingerprints.add(ds.fingerprint)
    assert len(fingerprints) == 1


def test_pair_id_is_a_fixed_function_of_content():
    # A golden value: ids must not change between runs, processes or library versions, or every
    # stored ranking and vector store would stop matching its dataset.
    assert pair_id("p", "a", "b") == "8ad7972c3a7a43fe"
    canonical = '{"chosen":"a","prompt":"p","rejected":"b"}'
    assert pair_id("p", "a", "b") == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert pair_id("p", "a", "b") != pair_id("p", "b", "a")  # a switched pair is another pair
    assert pair_id(_user("p"), _assistant("a"), _assistant("b")) != pair_id("p", "a", "b")
    # Key order inside a message does not matter; content does.
    reordered = [{"content": "p", "role": "user"}]
    assert pair_id(reordered, _assistant("a"), _assistant("b")) == pair_id(_user("p"), _assistant("a"), _assistant("b"))


def test_message_keys_padded_with_nulls_by_arrow_read_like_json(tmp_path):
    # Only one message has a "name"; Parquet pads the other rows' messages with name=None.
    rows = [dict(r) for r in CONVERSATIONAL]
    rows[0] = {**rows[0], "prompt": [{"role": "user", "content": "How do I bake bread?", "name": "ann"}]}
    from_jsonl = load_preferences(_write_jsonl(rows, tmp_path / "a"))
    from_parquet = load_preferences(_write_parquet(rows, tmp_path / "b"))
    assert from_jsonl.ids == from_parquet.ids
    assert from_parquet[0].prompt[0]["name"] == "ann"
    assert "name" not in from_parquet[1].chosen[0]
    assert [p.prompt for p in from_jsonl] == [p.prompt for p in from_parquet]


# ---------------------------------------------------------------------------------------------
# TRL's extract_prompt, compared with TRL itself



_texts = st.text(alphabet="ab .", min_size=1, max_size=8)
_messages = st.lists(
    st.builds(lambda role, content: {"role": role, "content": content}, st.sampled_from(["user", "assistant"]), st.sampled_from(["x", "y", "x y"])),
    min_size=1,
    max_size=4,
)


@needs_trl
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(_texts, _texts), st.tuples(_messages, _messages)))
def test_extract_prompt_matches_trl(pair):
    chosen, rejected = pair
    expected = trl_data_utils.extract_prompt({"chosen": chosen, "rejected": rejected})
    assert extract_prompt(chosen, rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])


@needs_trl
def test_implicit_prompt_rows_load_as_trl_maps_them():
    rows = [
        {"chosen": "Q: hi A", "rejected": "Q: hi B"},  # ordinary: the space goes to the responses
        {"chosen": "same start", "rejected": "same start and more"},  # one side a prefix of the other
        {"chosen": "abc ", "rejected": "xyz"},  # TRL quirk: no shared start and chosen ends with a space
        {"chosen": "no", "rejected": "yes"},  # nothing shared: empty prompt
    ]
    conversational = [
        {"chosen": _user("q") + _assistant("a"), "rejected": _user("q") + _assistant("b")},
        {"chosen": _user("q") + _assistant("a"), "rejected": _user("q") + _assistant("a") + _user("more") + _assistant("c")},
        {"chosen": _user("q1") + _assistant("a"), "rejected": _user("q2") + _assistant("a")},
    ]
    for data in (rows, conversational):
        # DPOTrainer maps TRL's extract_prompt over a datasets.Dataset without a prompt column.
        trl_rows = datasets.Dataset.from_list(data).map(trl_data_utils.extract_prompt).to_list()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PreferenceDataWarning)
            ds = load_preferences(data)
        assert [(p.prompt, p.chosen, p.rejected) for p in ds] == [(r["prompt"], r["chosen"], r["rejected"]) for r in trl_rows]


def test_no_shared_prompt_is_warned_about():
    with pytest.warns(PreferenceDataWarning, match="2 rows have no shared leading part"):
        ds = load_preferences([{"chosen": "abc ", "rejected": "xyz"}, {"chosen": "no", "rejected": "yes"}, {"chosen": "Q A", "rejected": "Q B"}])
    assert ds[0].prompt == "abc" and ds[0].chosen == " "  # TRL's quirk, reproduced
    assert ds[1].prompt == ""


@needs_trl
def test_string_prompt_with_conversational_responses_follows_trl_maybe_extract_prompt():
    rows = [{"prompt": "q", "chosen": _user("q") + _assistant("a"), "rejected": _user("q") + _assistant("b")}]
    expected = trl_data_utils.maybe_extract_prompt(dict(rows[0]))
    ds = load_preferences(rows)
    assert (ds[0].prompt, ds[0].chosen, ds[0].rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])
    assert ds[0].metadata == {"source_prompt": "q"}


# ---------------------------------------------------------------------------------------------
# Malformed rows, in both policies

GOOD_STANDARD = {"prompt": "p", "chosen": "a", "rejected": "b"}
GOOD_CHAT = {"prompt": _user("p"), "chosen": _assistant("a"), "rejected": _assistant("b")}

# (case, JSONL line, kind, words the message must contain, the good row around it)
BAD_LINES = [
    ("invalid json", '{"prompt": "p", "chosen": ', "invalid_json", "invalid JSON", GOOD_STANDARD),
    ("invalid utf-8", b'{"prompt": "p", "chosen": "\xff", "rejected": "b"}', "invalid_json", "UTF-8", GOOD_STANDARD),
    ("array line", "[1, 2]", "not_an_object", "expected a JSON object, got list", GOOD_STANDARD),
    ("string line", '"just text"', "not_an_object", "got str", GOOD_STANDARD),
    ("no chosen", {"prompt": "p", "rejected": "b"}, "missing_field", "no 'chosen'", GOOD_STANDARD),
    ("no rejected", {"prompt": "p", "chosen": "a"}, "missing_field", "no 'rejected'", GOOD_STANDARD),
    ("no prompt", {"chosen": "a", "rejected": "b"}, "missing_field", "no 'prompt'", GOOD_STANDARD),
    ("null chosen", {"prompt": "p", "chosen": None, "rejected": "b"}, "null_value", "chosen is null", GOOD_STANDARD),
    ("NaN rejected", '{"prompt": "p", "chosen": "a", "rejected": NaN}', "null_value", "rejected is NaN", GOOD_STANDARD),
    ("null prompt", {"prompt": None, "chosen": "a", "rejected": "b"}, "null_value", "prompt is null", GOOD_STANDARD),
    ("number chosen", {"prompt": "p", "chosen": 5, "rejected": "b"}, "wrong_type", "chosen is int", GOOD_STANDARD),
    ("dict rejected", {"prompt": "p", "chosen": "a", "rejected": {"text": "b"}}, "wrong_type", "rejected is dict", GOOD_STANDARD),
    ("empty chosen", {"prompt": "p", "chosen": "", "rejected": "b"}, "empty", "chosen is empty", GOOD_STANDARD),
    ("string vs list", {"prompt": "p", "chosen": "a", "rejected": _assistant("b")}, "type_mismatch", "chosen is a string but rejected is a list", GOOD_STANDARD),
    ("chat row in standard data", GOOD_CHAT, "format_mismatch", "conversational (message lists) but the dataset is standard", GOOD_STANDARD),
    ("message list prompt, string responses", {"prompt": _user("p"), "chosen": "a", "rejected": "b"}, "type_mismatch", "prompt is a list of messages", GOOD_STANDARD),
    ("non-string content", {**GOOD_CHAT, "chosen": [{"role": "assistant", "content": 5}]}, "bad_message", "chosen[0]['content'] is int", GOOD_CHAT),
    ("message without role", {**GOOD_CHAT, "rejected": [{"content": "b"}]}, "bad_message", "rejected[0] has no 'role'", GOOD_CHAT),
    ("message without content", {**GOOD_CHAT, "chosen": [{"role": "assistant"}]}, "bad_message", "chosen[0] has no 'content'", GOOD_CHAT),
    ("null content", {**GOOD_CHAT, "chosen": [{"role": "assistant", "content": None}]}, "bad_message", "has no 'content'", GOOD_CHAT),
    ("from/value message", {**GOOD_CHAT, "prompt": [{"from": "human", "value": "p"}]}, "bad_message", "maybe_convert_to_chatml", GOOD_CHAT),
    ("message not an object", {**GOOD_CHAT, "chosen": ["a"]}, "bad_message", "chosen[0] is str", GOOD_CHAT),
    ("empty message list", {**GOOD_CHAT, "rejected": []}, "empty", "rejected is empty", GOOD_CHAT),
    ("list vs string", {**GOOD_CHAT, "rejected": "b"}, "type_mismatch", "chosen is a list of messages but rejected is a string", GOOD_CHAT),
    ("standard row in chat data", GOOD_STANDARD, "format_mismatch", "standard (strings) but the dataset is conversational", GOOD_CHAT),
]


def _bad_file(tmp_path: Path, bad, good: dict) -> Path:
    """Line 1 good, line 2 blank, line 3 bad, line 4 good: the bad row is data row 1 at line 3."""
    bad_bytes = bad if isinstance(bad, bytes) else (bad if isinstance(bad, str) else json.dumps(bad)).encode()
    good_bytes = json.dumps(good).encode()
    other = json.dumps({**good, "chosen": good["rejected"], "rejected": good["chosen"]}).encode()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good_bytes + b"\n\n" + bad_bytes + b"\n" + other + b"\n")
    return path


@pytest.mark.parametrize("case, bad, kind, words, good", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_malformed_row_raises_naming_file_line_and_problem(case, bad, kind, words, good, tmp_path):
    path = _bad_file(tmp_path, bad, good)
    with pytest.raises(MalformedRowError) as info:
        load_preferences(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.source, error.line, error.unit, error.kind) == (str(path), 3, "line", kind)
    assert str(path) in str(error) and "line 3" in str(error) and words in str(error)


@pytest.mark.parametrize("case, bad, kind, words, good", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_malformed_row_is_recorded_when_skipping(case, bad, kind, words, good, tmp_path):
    path = _bad_file(tmp_path, bad, good)
    with pytest.warns(PreferenceDataWarning, match=rf"skipped 1 of 3 rows \(1 {kind}; first: line 3"):
        ds = load_preferences(path, on_error="skip")
    assert len(ds) == 2 and [p.row for p in ds] == [0, 2]
    assert len(ds.skipped) == 1
    skipped = ds.skipped[0]
    assert (skipped.row, skipped.line, skipped.kind) == (1, 3, kind)
    assert words in skipped.reason


def test_skip_summarises_counts_by_kind(tmp_path):
    lines = [json.dumps(GOOD_STANDARD), "{oops", "[]", json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}), "{bad"]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(PreferenceDataWarning, match=r"skipped 4 of 5 rows \(2 invalid_json, 1 not_an_object, 1 empty"):
        ds = load_preferences(path, on_error="skip")
    assert [s.kind for s in ds.skipped] == ["invalid_json", "not_an_object", "empty", "invalid_json"]
    assert len(ds) == 1


@pytest.mark.parametrize("container", ["parquet", "hf_dir", "list"])
def test_malformed_rows_in_tables_name_the_row(container, tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": None, "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": ""},
    ]
    with pytest.raises(MalformedRowError, match=r"row 2: chosen is null"):
        _load(container, rows, tmp_path)
    with pytest.warns(PreferenceDataWarning, match=r"skipped 2 of 3 rows"):
        ds = _load(container, rows, tmp_path / "again", on_error="skip")
    assert [(s.row, s.line, s.kind) for s in ds.skipped] == [(1, 2, "null_value"), (2, 3, "empty")]


def test_null_message_content_in_parquet_is_a_bad_message(tmp_path):
    rows = [GOOD_CHAT, {**GOOD_CHAT, "chosen": [{"role": "assistant", "content": None}]}]
    with pytest.raises(MalformedRowError, match=r"row 2: chosen\[0\] has no 'content'"):
        load_preferences(_write_parquet(rows, tmp_path / "x"))


def test_row_numbers_continue_across_parquet_batches(tmp_path):
    # The Parquet reader streams batches of 4,096 rows; the numbering must not restart.
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5000)]
    rows[4500]["chosen"] = ""
    with pytest.raises(MalformedRowError, match=r"row 4501: chosen is empty"):
        load_preferences(_write_parquet(rows, tmp_path / "big"))


def test_identical_implicit_rows_are_not_also_reported_as_lacking_a_prompt():
    with pytest.warns(PreferenceDataWarning) as record:
        load_preferences([{"chosen": "x", "rejected": "x"}, {"chosen": "Q A", "rejected": "Q B"}])
    message = str(record[0].message)
    assert "1 rows have chosen identical to rejected" in message and "no shared leading part" not in message


def test_identical_chosen_and_rejected_is_kept_with_a_warning_or_skipped():
    rows = [GOOD_STANDARD, {"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.warns(PreferenceDataWarning, match="1 rows have chosen identical to rejected"):
        ds = load_preferences(rows)
    assert len(ds) == 2 and ds.n_identical == 1
    with pytest.warns(PreferenceDataWarning, match=r"1 identical"):
        ds = load_preferences(rows, identical="skip")
    assert len(ds) == 1 and [(s.row, s.kind) for s in ds.skipped] == [(1, "identical")]


# ---------------------------------------------------------------------------------------------
# Whole-source errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="preference data not found: .*nope.jsonl"):
        load_preferences(tmp_path / "nope.jsonl")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match=r"unknown extension '.csv'"):
        load_preferences(path)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_jsonl(content, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        load_preferences(path)


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()), "rejected": pa.array([], pa.string())}), path)
    with pytest.raises(ValueError, match="is empty"):
        load_preferences(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet file"):
        load_preferences(path)


@pytest.mark.parametrize("container", ["jsonl", "parquet", "hf_dir"])
def test_missing_column_is_named_with_the_columns_found(container, tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "answer": "b"}]
    with pytest.raises(ValueError, match=r"no 'rejected' column \(columns: \['answer', 'chosen', 'prompt'\]\)"):
        _load(container, rows, tmp_path)


def test_all_rows_skipped_is_an_error(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text("{x\n{y\n")
    with pytest.raises(ValueError, match=r"no valid rows; all 2 were skipped \(2 invalid_json\)"):
        load_preferences(path, on_error="skip")


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a saved Hugging Face dataset"):
        load_preferences(tmp_path)


def test_splits(tmp_path):
    path = _write_hf_dict_dir(STANDARD, tmp_path / "dd")
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]: pass split="):
        load_preferences(path)
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_preferences(path, split="valid")
    assert len(load_preferences(path, split="test")) == 1
    assert load_preferences(path, split="train").source == f"{path}[train]"
    with pytest.raises(ValueError, match="only applies to a saved DatasetDict"):
        load_preferences(_write_jsonl(STANDARD, tmp_path / "f"), split="train")
    with pytest.raises(ValueError, match="holds a single Dataset"):
        load_preferences(_write_hf_dir(STANDARD, tmp_path / "single"), split="train")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        load_preferences(STANDARD, on_error="ignore")
    with pytest.raises(ValueError, match="identical must be"):
        load_preferences(STANDARD, identical="drop")
    with pytest.raises(TypeError, match="source is int"):
        load_preferences(42)
    with pytest.raises(ValueError, match="columns keys must be among"):
        load_preferences(STANDARD, columns={"answer": "chosen"})


def test_column_mapping():
    rows = [{"question": "p", "good": "a", "bad": "b"}]
    ds = load_preferences(rows, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert (ds[0].prompt, ds[0].chosen, ds[0].rejected) == ("p", "a", "b")
    assert ds.ids == [pair_id("p", "a", "b")]
    with pytest.raises(ValueError, match="has both 'good' and 'chosen'"):
        load_preferences([{"prompt": "p", "chosen": "a", "good": "c", "rejected": "b"}], columns={"chosen": "good"})
    # Swapping two columns by name is fine: both are renamed.
    ds = load_preferences([{"prompt": "p", "chosen": "a", "rejected": "b"}], columns={"chosen": "rejected", "rejected": "chosen"})
    assert (ds[0].chosen, ds[0].rejected) == ("b", "a")


# ---------------------------------------------------------------------------------------------
# Duplicates and stored ids


def test_duplicates_get_ordered_suffixes_and_are_reported():
    rows = [dict(GOOD_STANDARD, origin="a"), dict(GOOD_STANDARD, origin="b"), {"prompt": "q", "chosen": "a", "rejected": "b"}, dict(GOOD_STANDARD, origin="c")]
    with pytest.warns(PreferenceDataWarning, match="2 rows repeat the content of an earlier row"):
        ds = load_preferences(rows)
    base = pair_id("p", "a", "b")
    assert ds.ids == [base, f"{base}#1", pair_id("q", "a", "b"), f"{base}#2"]
    assert [p.metadata["origin"] for p in ds if p.pair_id.startswith(base)] == ["a", "b", "c"]
    assert ds.n_duplicates == 2


def test_stored_ids_are_kept_when_they_match_and_recomputed_otherwise():
    base = pair_id("p", "a", "b")
    rows = [
        {**GOOD_STANDARD, "pair_id": f"{base}#2"},  # a filtered subset kept the third copy
        {**GOOD_STANDARD, "pair_id": "0123456789abcdef"},  # edited content: wrong hash
        {"prompt": "p", "chosen": "b", "rejected": "a", "pair_id": base},  # a switched pair
        {"prompt": "q", "chosen": "a", "rejected": "b", "pair_id": 17},  # another tool's ids
    ]
    with pytest.warns(PreferenceDataWarning, match="3 stored pair_id values do not match"):
        ds = load_preferences(rows)
    assert ds.ids == [f"{base}#2", base, pair_id("p", "b", "a"), pair_id("q", "a", "b")]
    assert [p.metadata.get("source_pair_id") for p in ds] == [None, "0123456789abcdef", base, 17]


# ---------------------------------------------------------------------------------------------
# The dataset object


def test_dataset_sequence_lookup_and_fingerprint():
    ds = load_preferences(STANDARD)
    assert len(ds) == 3 and ds[-1] == ds[2] and list(ds) == [ds[0], ds[1], ds[2]]
    assert ds.by_id(ds[1].pair_id) is ds[1] and ds.index_of(ds[2].pair_id) == 2
    assert ds[1].pair_id in ds and ds[1] in ds and "nope" not in ds
    with pytest.raises(KeyError, match="no pair with id 'nope'"):
        ds.by_id("nope")
    head = ds[:2]
    assert isinstance(head, PreferenceDataset) and head.ids == ds.ids[:2]
    assert len(ds.fingerprint) == 64
    assert head.fingerprint != ds.fingerprint
    assert ds[::-1].fingerprint != ds.fingerprint  # order matters
    assert PreferenceDataset(list(ds)).fingerprint == ds.fingerprint
    with pytest.raises(ValueError, match="duplicate pair_id"):
        PreferenceDataset([ds[0], ds[0]])


def test_make_pair_agrees_with_loading():
    pair = make_pair("How do I bake bread?", " Mix flour and water.", " I cannot help.", row=0, source="<list of rows>")
    assert pair == load_preferences(STANDARD)[0]
    with pytest.raises(ValueError, match=r"rejected is empty \[empty\]"):
        make_pair("p", "a", "")
    with pytest.raises(ValueError, match="prompt is a string but chosen/rejected are message lists"):
        make_pair("p", _assistant("a"), _assistant("b"))


# ---------------------------------------------------------------------------------------------
# Writers and the round trip


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("prompt_mode", ["explicit", "implicit"])
@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_round_trip_keeps_ids_content_and_metadata(fmt, prompt_mode, suffix, tmp_path):
    rows = CONTENT[fmt] if prompt_mode == "explicit" else _implicit(CONTENT[fmt])
    rows = rows + [rows[0]]  # a duplicate, so a '#1' id must survive too
    with pytest.warns(PreferenceDataWarning, match="repeat the content"):
        first = load_preferences(_write_parquet(rows, tmp_path / "in"))
    path = save_preferences(first, tmp_path / f"out{suffix}")
    with pytest.warns(PreferenceDataWarning, match="repeat the content"):
        second = load_preferences(path)
    assert second.ids == first.ids and second.fingerprint == first.fingerprint
    assert [(p.prompt, p.chosen, p.rejected, p.metadata) for p in second] == [
        (p.prompt, p.chosen, p.rejected, p.metadata) for p in first
    ]
    # TRL reads the file as an explicit-prompt preference dataset with our id column.
    reader = datasets.Dataset.from_json if suffix == ".jsonl" else datasets.Dataset.from_parquet
    trl_view = reader(str(path), cache_dir=str(tmp_path / "cache"))
    assert trl_view.column_names == ["prompt", "chosen", "rejected", "origin", "pair_id"]
    assert trl_view["pair_id"] == first.ids
    if trl_data_utils is not None:
        assert trl_data_utils.maybe_extract_prompt(trl_view[0]) == trl_view[0]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_filtered_and_switched_subset_round_trips(suffix, tmp_path):
    rows = STANDARD + [STANDARD[0]]
    with pytest.warns(PreferenceDataWarning):
        full = load_preferences(rows)
    # Filter the first copy of the duplicate out, and switch the second pair.
    switched = full[1]
    switched = make_pair(switched.prompt, switched.rejected, switched.chosen, metadata={**switched.metadata, "source_pair_id": switched.pair_id})
    subset = [switched, full[2], full[3]]
    second = load_preferences(save_preferences(subset, tmp_path / f"subset{suffix}"))
    assert second.ids == [p.pair_id for p in subset]
    assert second.ids[2].endswith("#1")  # the surviving copy keeps its id
    assert second[0].metadata["source_pair_id"] == full[1].pair_id


def test_save_errors(tmp_path):
    ds = load_preferences(STANDARD)
    with pytest.raises(ValueError, match="save_preferences writes .jsonl or .parquet"):
        save_preferences(ds, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="duplicate pair_id"):
        save_preferences([ds[0], ds[0]], tmp_path / "out.jsonl")
    clash = PreferencePair("x", "p", "a", "b", metadata={"chosen": "c"})
    with pytest.raises(ValueError, match=r"metadata key\(s\) \['chosen'\] clash"):
        save_preferences([clash], tmp_path / "out.jsonl")
    mixed = [make_pair("p", "a", "b", metadata={"score": 1}), make_pair("q", "a", "b", metadata={"score": "high"})]
    with pytest.raises(ValueError, match="column 'score' cannot be stored in Parquet"):
        save_preferences(mixed, tmp_path / "out.parquet")


def test_nan_metadata_is_written_as_null_in_jsonl(tmp_path):
    pair = make_pair("p", "a", "b", metadata={"score": math.nan})
    path = save_preferences([pair], tmp_path / "out.jsonl")
    assert json.loads(path.read_text())["score"] is None
