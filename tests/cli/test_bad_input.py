"""Bad input gets one clear line or a recorded, reported skip; never a traceback, never a silent loss."""
from __future__ import annotations

import json

import pytest

from headwater.cli import main
from headwater.data import load_preferences, save_preferences
from headwater.engine.store import VectorStore
from headwater.methods.attribution import Ranking

ROWS = [
    {"prompt": "How do I bake bread?", "chosen": " Mix flour and water.", "rejected": " No."},
    {"prompt": "Reply in lowercase: tell me about the sea.", "chosen": " the sea is blue.", "rejected": " The Sea."},
    {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " I cannot help."},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _error(capsys):
    """The one error line (progress bars on stderr come before it)."""
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in "\n".join(lines), lines
    return errors[0]


def test_devices_that_do_not_exist_are_one_line(tmp_path, saved_model, capsys):
    data = _jsonl(tmp_path / "p.jsonl", ROWS)
    for device, message in (("nonsense", "unknown device 'nonsense'"), ("cuda:7", "cuda")):
        assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "s"),
                     "--device", device]) == 2
        assert message in _error(capsys).lower()


def test_an_out_path_that_is_a_file_is_one_line(tmp_path, saved_model, capsys):
    data = _jsonl(tmp_path / "p.jsonl", ROWS)
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(taken)]) == 2
    assert "is a file, not a directory" in _error(capsys)
    assert main(["retrain", "--model", str(saved_model), "--data", str(data), "--out", str(taken)]) == 2
    assert "is a file, not a directory" in _error(capsys)
    assert main(["intervene", "--data", str(data), "--drop-source", "x", "--out", str(taken)]) == 2
    _error(capsys)


def test_an_encode_that_skips_every_pair_fails_and_says_why(tmp_path, saved_model, capsys):
    data = _jsonl(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "s"
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(out),
                 "--max-length", "3", "--overlong", "skip"]) == 2
    err = _error(capsys)
    assert "none of the 3 pairs could be encoded (3 overlong)" in err
    assert len(VectorStore.open(out)) == 0  # the store records every skip with its reason
    assert main(["attribute", "--vectors", str(out), "--probe-data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "holds no vector" in _error(capsys)


def test_an_empty_conversation_is_a_row_outcome_not_an_abort(tmp_path, saved_model, capsys, tiny_tokenizer):
    if getattr(tiny_tokenizer, "chat_template", None) is None:
        pytest.skip("the tiny tokenizer has no chat template")
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go away"}]},
        {"prompt": [], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Bye"}]},
    ]
    data = _jsonl(tmp_path / "chat.jsonl", rows)
    args = ["encode", "--model", str(saved_model), "--data", str(data), "--format", "chat"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = _error(capsys)
    assert "pair 1 (id " in err and "empty" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    store = VectorStore.open(tmp_path / "b")
    assert len(store) == 1 and store.manifest["skipped_pairs"][0]["position"] == 1
    assert "cannot tokenise" in store.manifest["skipped_pairs"][0]["reason"]


def test_a_lone_surrogate_is_a_named_row_problem(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "Hi", "chosen": " a\\ud800b", "rejected": " c"}\n')
    with pytest.raises(ValueError, match=r"line 2: chosen holds a lone surrogate .* \[invalid_text\]"):
        load_preferences(path)
    with pytest.warns(UserWarning, match="1 invalid_text"):
        assert len(load_preferences(path, on_error="skip")) == 1
    # Writing such text fails before the old file is touched.
    good = save_preferences(load_preferences(tmp_path / "good.jsonl" if False else _jsonl(tmp_path / "g.jsonl", ROWS)),
                            tmp_path / "out.jsonl")
    before = good.read_bytes()
    bad = load_preferences(_jsonl(tmp_path / "g2.jsonl", ROWS))
    pair = bad[0]
    object.__setattr__(pair, "metadata", {"note": "x\ud800"})
    with pytest.raises(ValueError, match="not valid Unicode"):
        save_preferences(bad, good)
    assert good.read_bytes() == before


def test_an_overlong_pair_is_capped_at_the_models_context(tmp_path, saved_model, capsys, tiny_llama):
    context = tiny_llama.config.max_position_embeddings
    rows = ROWS + [{"prompt": "Q:", "chosen": " word" * (4 * context), "rejected": " no"}]
    data = _jsonl(tmp_path / "long.jsonl", rows)
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "s")]) == 0
    summary = json.loads(capsys.readouterr().out)
    store = VectorStore.open(tmp_path / "s")
    assert store.manifest["tokenization"]["max_length"] == context and summary["n_truncated"] == 1
    assert len(store) == 4


def test_rankings_and_planted_ids_are_checked(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"pair_id": "a", "score": 0.5}\n{"pair_id": "b"\n')
    with pytest.raises(ValueError, match="r.jsonl:2: not valid JSON"):
        Ranking.load(bad)
    bad.write_text('{"pair_id": "a", "score": 0.5}\n{"id": "b", "score": 1}\n')
    with pytest.raises(ValueError, match="r.jsonl:2: expected an object with 'pair_id' and 'score'"):
        Ranking.load(bad)
    bad.write_text('{"pair_id": "a", "score": 0.5}\n{"pair_id": "a", "score": 1}\n')
    with pytest.raises(ValueError, match="ranked twice"):
        Ranking.load(bad)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"pair_id": ["a"], "rank": [1]}), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"no \['score'\] column"):
        Ranking.load(tmp_path / "r.parquet")


def test_probe_data_with_a_bad_message_names_the_line(tmp_path):
    from headwater.data import read_labelled_responses

    path = _jsonl(tmp_path / "probe.jsonl", [
        {"prompt": "Q", "response": "A", "exhibits": True},
        {"prompt": [{"role": "user"}], "response": "A", "exhibits": False},
    ])
    with pytest.raises(ValueError, match=r"probe.jsonl:2: prompt\[0\] has no 'content' \[bad_message\]"):
        read_labelled_responses(path)


def test_no_progress_is_quiet_and_a_foreign_manifest_is_named(tmp_path, saved_model, capsys):
    from transformers.utils import logging as hf_logging

    data = _jsonl(tmp_path / "p.jsonl", ROWS)
    try:
        assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "Loading weights" not in err and "pair/s" not in err and "using the torch backend" not in err
    finally:
        hf_logging.enable_progress_bar()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del manifest["layer"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    probe = _jsonl(tmp_path / "probe.jsonl", [{"prompt": "Q", "response": "A", "exhibits": True},
                                               {"prompt": "Q", "response": "B", "exhibits": False}])
    assert main(["attribute", "--vectors", str(tmp_path / "s"), "--probe-data", str(probe),
                 "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "the store's manifest has no valid 'layer'" in _error(capsys)
