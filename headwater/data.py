"""Preference data: the rows TRL's DPOTrainer reads, normalised to :class:`PreferencePair`.

A row is ``prompt`` / ``chosen`` / ``rejected``. Each field is either a plain string
("standard" format) or a list of ``{"role", "content"}`` messages ("conversational" format).
The prompt may be explicit (its own column) or implicit (the shared leading part of
``chosen`` and ``rejected``, which is split off on load exactly as TRL's ``extract_prompt`` does).

Sources: JSONL (``.jsonl``; ``.json`` holding JSON lines or one JSON array), Parquet
(``.parquet``), a directory written by ``datasets.Dataset.save_to_disk`` or
``DatasetDict.save_to_disk`` (pick the split), an in-memory ``datasets.Dataset`` /
``DatasetDict``, or a list of dicts. :func:`save_preferences` writes JSONL or Parquet in TRL's
format, so a filtered or switched dataset is ready for any DPO trainer.

Pair ids
    ``pair_id`` is the first 16 hex digits of the sha256 of a canonical JSON of the normalised
    ``(prompt, chosen, rejected)`` (sorted keys, no whitespace, UTF-8), so the same content gets
    the same id from every file format, on every run, whether its prompt was explicit or implicit.
    Metadata does not enter the id. A row whose content repeats an earlier row's gets the id
    ``<hash>#k``: the first occurrence keeps the bare hash, the k-th repeat gets ``#k``, in order
    of appearance. A ``pair_id`` column in the input is never trusted blindly: when its hash part
    matches the content it is kept (so a filtered subset that kept ``<hash>#2`` keeps that id);
    otherwise the id is recomputed and the stored value is kept in ``metadata["source_pair_id"]``
    (the lineage of a switched or edited pair).

What is an error and what is only a warning
    Row errors (``on_error="raise"`` raises :class:`MalformedRowError` naming file, 1-based
    line/row and problem; ``on_error="skip"`` records the row in ``dataset.skipped`` and warns
    once with the counts by kind):

    ==================  ==========================================================================
    ``invalid_json``    a JSONL line that is not valid JSON or not valid UTF-8
    ``not_an_object``   a JSONL line / list element that is not an object (dict)
    ``missing_field``   no ``chosen`` / ``rejected``; no ``prompt`` when the data has a prompt column
    ``null_value``      a field that is null / None / NaN
    ``wrong_type``      a field that is neither a string nor a list of messages
    ``bad_message``     a message that is not an object, lacks a string ``role`` or ``content``
    ``type_mismatch``   chosen a string while rejected is a list (or the reverse); a message-list
                        prompt with string responses
    ``empty``           an empty ``chosen`` or ``rejected`` ("" or [])
    ``format_mismatch`` a conversational row in a standard dataset or the reverse (the first valid
                        row decides, as TRL decides from the first example)
    ==================  ==========================================================================

    Warnings only, the row is kept:

    - chosen identical to rejected: legal for TRL, but it carries no signal (its DPO gradient is
      zero and its datapoint vector is the zero vector, so its cosine scores are undefined).
      Kept by default so the dataset stays row-aligned with what TRL trains on;
      ``identical="skip"`` records such rows in ``skipped`` with kind ``identical`` instead.
    - duplicate content: kept, with a ``#k`` id suffix (above).
    - a stored ``pair_id`` that does not match the content: recomputed (above).
    - implicit prompt with no shared leading part: the prompt is empty (or, TRL quirk, see
      :func:`extract_prompt`).

    File errors always raise: a missing file, an unknown extension, an unreadable file, a file
    without rows, a file without a ``chosen`` or ``rejected`` column, a file whose rows were all
    skipped, a missing or unknown split.

Normalisation: message keys other than ``role`` and ``content`` are kept unless their value is
null (Arrow pads a struct with nulls for keys that only other rows have, so dropping them makes
JSONL and Parquet agree). A string prompt with message-list responses is TRL's
``maybe_extract_prompt`` case: the prompt is extracted from the responses and the given prompt
is kept in ``metadata["source_prompt"]``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, overload

Message = dict[str, str]
Text = Union[str, list[Message]]

#: The columns TRL's DPOTrainer reads, and the id column headwater adds when it writes.
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
ID_COLUMN = "pair_id"
_ID_HEX = 16
_ID_PATTERN = re.compile(rf"^([0-9a-f]{{{_ID_HEX}}})(?:#([1-9][0-9]*))?$")
_JSONL_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair d = (p, r⁺, r⁻) with a stable content-hash id.

    Attributes:
        pair_id: stable id derived from the content (see :func:`pair_id`), so that rankings,
            interventions and reports point back to the same pair across runs.
        prompt: the prompt text, or the list of prompt messages ("" / [] when there is none).
        chosen: the preferred response (text, or the list of assistant messages).
        rejected: the dispreferred response, same type as ``chosen``.
        row: 0-based row index in the source.
        source: where the row came from (a file path or a dataset name).
        metadata: every other column of the row, kept as is (e.g. a data-source column).
    """

    pair_id: str
    prompt: Text
    chosen: Text
    rejected: Text
    row: int = -1
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def conversational(self) -> bool:
        """True when the responses are message lists rather than plain strings."""
        return not isinstance(self.chosen, str)


# ---------------------------------------------------------------------------------------------
# Errors and warnings


class MalformedRowError(ValueError):
    """A row of preference data that cannot become a :class:`PreferencePair`.

    Attributes:
        source: the file (or dataset name) the row came from.
        line: 1-based line of a JSONL file, or 1-based row of a table / dataset / list.
        unit: ``"line"`` or ``"row"``, the unit of ``line``.
        kind: a short code for the problem (see the module docstring).
        reason: what is wrong, in words.
    """

    def __init__(self, source: str, line: int, unit: str, kind: str, reason: str):
        self.source, self.line, self.unit, self.kind, self.reason = source, line, unit, kind, reason
        super().__init__(f"{source}, {unit} {line}: {reason} [{kind}]")


class PreferenceDataWarning(UserWarning):
    """Something in preference data that was kept or skipped and deserves a look."""


class SkippedRow(NamedTuple):
    """A row left out of a :class:`PreferenceDataset`, and why.

    ``row`` is the 0-based data row in the source (blank JSONL lines do not count); ``line`` is
    the 1-based line of a JSONL file or 1-based row of a table; ``kind`` is a short code (see the
    module docstring); ``reason`` says what is wrong.
    """

    row: int
    line: int
    kind: str
    reason: str


class _RowProblem(Exception):
    """Raised inside row validation; turned into MalformedRowError or a SkippedRow."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# ---------------------------------------------------------------------------------------------
# Content: normalisation, TRL's prompt extraction, ids


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split the shared leading part off ``chosen`` and ``rejected``, as TRL 1.16 does.

    Behaves exactly like ``trl.data_utils.extract_prompt`` (which DPOTrainer maps over a
    dataset without a ``prompt`` column), so the pair headwater attributes is the pair TRL
    trains on — quirks included:

    - the split point is the first differing character (string) or message (list); for strings,
      when the character before it is a space, the space goes to the responses;
    - when one side is a prefix of the other, the split is one element *before* the end of the
      shorter side, so both responses stay non-empty;
    - for strings that differ at the first character while ``chosen`` ends with a space, TRL's
      ``chosen[idx - 1]`` wraps round to the last character and the split index becomes -1: the
      prompt is ``chosen[:-1]``. Reproduced (TRL trains on that), and warned about on load.

    Returns:
        ``(prompt, chosen, rejected)``, each the same type as the inputs.

    Raises:
        ValueError: when either side is empty (TRL fails there with UnboundLocalError).
    """
    split = _prompt_split_index(chosen, rejected)
    return chosen[:split], chosen[split:], rejected[split:]


def _prompt_split_index(chosen: Text, rejected: Text) -> int:
    shorter = min(len(chosen), len(rejected))
    if shorter == 0:
        raise ValueError("cannot extract a prompt: chosen or rejected is empty")
    # A line-for-line port of TRL 1.16's loop; `idx` deliberately survives the loop.
    for idx in range(shorter):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return idx


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def pair_id(prompt: Text, chosen: Text, rejected: Text) -> str:
    """The content hash of a pair: 16 hex digits of sha256 over canonical JSON.

    The inputs must already be normalised (as :func:`load_preferences` leaves them); the same
    content gives the same id in every process and from every file format. Duplicates within a
    dataset get a ``#k`` suffix on top of this (see the module docstring).
    """
    payload = _canonical_json({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_ID_HEX]


def make_pair(
    prompt: Text,
    chosen: Text,
    rejected: Text,
    *,
    row: int = -1,
    source: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> PreferencePair:
    """Build a validated :class:`PreferencePair` whose id is its content hash (no ``#k`` suffix).

    For code that creates pairs (the organism, interventions). Raises :class:`ValueError` with
    the same messages as :func:`load_preferences` for malformed content.
    """
    try:
        prompt, chosen, rejected = _normalise_explicit(prompt, chosen, rejected)
    except _RowProblem as problem:
        raise ValueError(f"{problem.reason} [{problem.kind}]") from None
    return PreferencePair(
        pair_id(prompt, chosen, rejected), prompt, chosen, rejected, row, source, dict(metadata or {})
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _normalise_text(name: str, value: Any) -> Text:
    """Check one field and return it normalised (messages: null extra keys dropped)."""
    if _is_null(value):
        raise _RowProblem("null_value", f"{name} is {'NaN' if value is not None else 'null'}")
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise _RowProblem(
            "wrong_type",
            f"{name} is {type(value).__name__} {_describe(value)}, expected a string or a list of "
            "{'role', 'content'} messages",
        )
    messages: list[Message] = []
    for j, message in enumerate(value):
        where = f"{name}[{j}]"
        # `type(...) is dict` first: the ABC check costs more and nearly every message is a dict.
        if type(message) is not dict and not isinstance(message, Mapping):
            raise _RowProblem(
                "bad_message", f"{where} is {type(message).__name__} {_describe(message)}, expected a "
                "message object with 'role' and 'content'"
            )
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                hint = (
                    " (from/value messages: convert them with TRL's maybe_convert_to_chatml)"
                    if "from" in message or "value" in message
                    else ""
                )
                raise _RowProblem("bad_message", f"{where} has no {key!r}{hint}")
            if not isinstance(message[key], str):
                raise _RowProblem(
                    "bad_message",
                    f"{where}[{key!r}] is {type(message[key]).__name__} {_describe(message[key])}, "
                    "expected a string",
                )
        if not message["role"]:
            raise _RowProblem("bad_message", f"{where} has an empty 'role'")
        # Arrow pads struct keys that only some messages have with nulls; drop them so that a
        # message reads the same from JSONL and from Parquet.
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def _check_responses(chosen: Any, rejected: Any) -> tuple[Text, Text]:
    chosen = _normalise_text("chosen", chosen)
    rejected = _normalise_text("rejected", rejected)
    if isinstance(chosen, str) != isinstance(rejected, str):
        kinds = ("a string", "a list of messages")
        raise _RowProblem(
            "type_mismatch",
            f"chosen is {kinds[not isinstance(chosen, str)]} but rejected is "
            f"{kinds[not isinstance(rejected, str)]}",
        )
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if len(value) == 0:
            raise _RowProblem("empty", f"{name} is empty")
    return chosen, rejected


def _normalise_explicit(prompt: Any, chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    chosen, rejected = _check_responses(chosen, rejected)
    return _check_prompt(prompt, chosen), chosen, rejected


def _check_prompt(prompt: Any, chosen: Text) -> Text:
    """Normalise an explicit prompt; it must be of the same kind as the (checked) responses."""
    prompt = _normalise_text("prompt", prompt)
    if isinstance(prompt, str) != isinstance(chosen, str):
        kinds = ("a string", "a list of messages")
        raise _RowProblem(
            "type_mismatch",
            f"prompt is {kinds[not isinstance(prompt, str)]} but chosen/rejected are "
            f"{'strings' if isinstance(chosen, str) else 'message lists'}",
        )
    return prompt


# ---------------------------------------------------------------------------------------------
# The dataset


class PreferenceDataset(Sequence[PreferencePair]):
    """An ordered, immutable collection of :class:`PreferencePair` with unique ids.

    Attributes:
        source: where the pairs came from (a path or a dataset name).
        skipped: rows left out on load, each a :class:`SkippedRow` (row, line, kind, reason).
        n_duplicates: rows whose content repeated an earlier row's (kept, ``#k`` ids).
        n_identical: kept rows whose chosen equals their rejected.
    """

    def __init__(
        self,
        pairs: Iterable[PreferencePair],
        *,
        source: str = "",
        skipped: Iterable[SkippedRow] = (),
        n_duplicates: int = 0,
        n_identical: int = 0,
    ):
        self._pairs: tuple[PreferencePair, ...] = tuple(pairs)
        self.source = source
        self.skipped: list[SkippedRow] = list(skipped)
        self.n_duplicates = n_duplicates
        self.n_identical = n_identical
        self._index: dict[str, int] = {}
        for i, pair in enumerate(self._pairs):
            if not isinstance(pair, PreferencePair):
                raise TypeError(f"item {i} is {type(pair).__name__}, expected PreferencePair")
            if pair.pair_id in self._index:
                raise ValueError(
                    f"duplicate pair_id {pair.pair_id!r} at positions {self._index[pair.pair_id]} and {i}"
                )
            self._index[pair.pair_id] = i
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._pairs)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...

    @overload
    def __getitem__(self, index: slice) -> PreferenceDataset: ...

    def __getitem__(self, index: int | slice) -> PreferencePair | PreferenceDataset:
        if isinstance(index, slice):
            return PreferenceDataset(self._pairs[index], source=self.source)
        return self._pairs[index]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self._pairs)

    def __contains__(self, item: object) -> bool:
        """A pair id (str) or a PreferencePair equal to the one stored under its id."""
        if isinstance(item, str):
            return item in self._index
        if isinstance(item, PreferencePair) and item.pair_id in self._index:
            return self._pairs[self._index[item.pair_id]] == item
        return False

    def __repr__(self) -> str:
        return (
            f"PreferenceDataset({len(self)} pairs, source={self.source!r}, "
            f"skipped={len(self.skipped)}, fingerprint={self.fingerprint[:12]}...)"
        )

    @property
    def ids(self) -> list[str]:
        """The pair ids in order."""
        return [pair.pair_id for pair in self._pairs]

    @property
    def fingerprint(self) -> str:
        """sha256 (64 hex digits) over the pair ids in order: equal fingerprints, equal datasets.

        Used to check that a vector store was computed from this dataset.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for pair in self._pairs:
                digest.update(pair.pair_id.encode("utf-8") + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def conversational(self) -> bool | None:
        """True for message-list data, False for plain strings, None when empty."""
        return self._pairs[0].conversational if self._pairs else None

    def index_of(self, pair_id: str) -> int:
        """Position of the pair with this id; KeyError naming the id when absent."""
        try:
            return self._index[pair_id]
        except KeyError:
            raise KeyError(f"no pair with id {pair_id!r} in {self.source or 'this dataset'}") from None

    def by_id(self, pair_id: str) -> PreferencePair:
        """The pair with this id; KeyError naming the id when absent."""
        return self._pairs[self.index_of(pair_id)]

    def to_rows(self) -> list[dict[str, Any]]:
        """TRL-format rows: prompt, chosen, rejected, the metadata columns, then ``pair_id``.

        ``datasets.Dataset.from_list(ds.to_rows())`` gives a dataset DPOTrainer accepts.
        """
        return [_pair_to_row(pair) for pair in self._pairs]


def _pair_to_row(pair: PreferencePair) -> dict[str, Any]:
    clash = set(pair.metadata) & {*PAIR_COLUMNS, ID_COLUMN}
    if clash:
        raise ValueError(f"pair {pair.pair_id}: metadata key(s) {sorted(clash)} clash with the pair columns")
    return {
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        **pair.metadata,
        ID_COLUMN: pair.pair_id,
    }


# ---------------------------------------------------------------------------------------------
# Reading sources into raw rows


@dataclass
class _RawRows:
    """What a reader hands to the normaliser: rows (dict, or a problem) and the column names."""

    name: str
    unit: str  # "line" (JSONL) or "row" (tables, lists)
    rows: list[tuple[int, dict[str, Any] | _RowProblem]]  # (1-based line/row, content)
    columns: set[str] | None  # None: not known (no object rows)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a small JSONL file.

    Raises:
        ValueError: a line that is not valid JSON, naming ``file:line``.
    """
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None


def _read_jsonl(path: Path) -> _RawRows:
    name = str(path)
    data = path.read_bytes()
    stripped = data.lstrip()
    if path.suffix == ".json" and stripped.startswith(b"["):
        # A .json file may hold one JSON array of objects instead of JSON lines.
        try:
            items = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{name}: not a valid JSON array ({error})") from None
        return _rows_from_objects(items, name)
    rows: list[tuple[int, dict[str, Any] | _RowProblem]] = []
    columns: set[str] = set()
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; they are not rows
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            problem = _RowProblem("invalid_json", f"line is not valid UTF-8 ({error})")
            rows.append((number, problem))
            continue
        except json.JSONDecodeError as error:
            problem = _RowProblem("invalid_json", f"invalid JSON ({error.msg} at column {error.colno})")
            rows.append((number, problem))
            continue
        if not isinstance(value, dict):
            got = f"{type(value).__name__} {_describe(value)}"
            rows.append((number, _RowProblem("not_an_object", f"expected a JSON object, got {got}")))
            continue
        columns.update(value)
        rows.append((number, value))
    has_objects = any(isinstance(content, dict) for _, content in rows)
    return _RawRows(name, "line", rows, columns if has_objects else None)


def _rows_from_objects(items: Any, name: str) -> _RawRows:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name}: expected a list of row dicts, got {type(items).__name__}")
    rows: list[tuple[int, dict[str, Any] | _RowProblem]] = []
    columns: set[str] = set()
    for number, value in enumerate(items, start=1):
        if isinstance(value, Mapping):
            columns.update(value)
            rows.append((number, dict(value)))
        else:
            got = f"{type(value).__name__} {_describe(value)}"
            rows.append((number, _RowProblem("not_an_object", f"expected an object (dict), got {got}")))
    has_objects = any(isinstance(content, dict) for _, content in rows)
    return _RawRows(name, "row", rows, columns if has_objects else None)


def _read_parquet(path: Path) -> _RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    rows: list[tuple[int, dict[str, Any] | _RowProblem]] = []
    for batch in parquet.iter_batches(batch_size=4096):
        start = len(rows) + 1
        rows.extend(enumerate(batch.to_pylist(), start=start))
    return _RawRows(str(path), "row", rows, set(parquet.schema_arrow.names))


def _read_hf_dataset(dataset: Any, name: str) -> _RawRows:
    rows: list[tuple[int, dict[str, Any] | _RowProblem]] = []
    # Format None gives plain Python objects; iter() respects any indices mapping (select/shuffle).
    for batch in dataset.with_format(None).iter(batch_size=4096):
        keys = list(batch)
        count = len(batch[keys[0]]) if keys else 0
        for i in range(count):
            rows.append((len(rows) + 1, {key: batch[key][i] for key in keys}))
    return _RawRows(name, "row", rows, set(dataset.column_names))


def _select_split(dataset_dict: Any, split: str | None, name: str) -> tuple[Any, str]:
    splits = list(dataset_dict)
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{name} is a DatasetDict with splits {splits}: pass split=...")
        split = splits[0]
    if split not in dataset_dict:
        raise ValueError(f"{name} has no split {split!r} (splits: {splits})")
    return dataset_dict[split], f"{name}[{split}]"


def _read_source(source: Any, split: str | None, source_name: str | None) -> _RawRows:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"preference data not found: {path}")
        if path.is_dir():
            markers = ("dataset_info.json", "state.json", "dataset_dict.json")
            if not any((path / marker).exists() for marker in markers):
                raise ValueError(
                    f"{path} is a directory but not a saved Hugging Face dataset (no {' / '.join(markers)}; "
                    "write one with datasets.Dataset.save_to_disk)"
                )
            import datasets

            loaded = datasets.load_from_disk(str(path))
            name = source_name or str(path)
            if isinstance(loaded, datasets.DatasetDict):
                loaded, name = _select_split(loaded, split, name)
            elif split is not None:
                raise ValueError(f"split={split!r} given but {path} holds a single Dataset, not a DatasetDict")
            return _read_hf_dataset(loaded, name)
        if split is not None:
            raise ValueError(f"split={split!r} only applies to a saved DatasetDict, not to the file {path}")
        suffix = path.suffix.lower()
        if suffix in _JSONL_SUFFIXES:
            raw = _read_jsonl(path)
        elif suffix in _PARQUET_SUFFIXES:
            raw = _read_parquet(path)
        else:
            raise ValueError(
                f"{path}: unknown extension {path.suffix!r}; expected .jsonl, .json, .parquet, or a "
                "directory written by datasets.Dataset.save_to_disk"
            )
        if source_name:
            raw.name = source_name
        return raw
    if isinstance(source, (list, tuple)):
        if split is not None:
            raise ValueError(f"split={split!r} only applies to a DatasetDict, not to a list of rows")
        return _rows_from_objects(source, source_name or "<list of rows>")
    module = type(source).__module__ or ""
    if module.startswith("datasets"):
        import datasets

        if isinstance(source, datasets.DatasetDict):
            dataset, name = _select_split(source, split, source_name or "<datasets.DatasetDict>")
            return _read_hf_dataset(dataset, name)
        if isinstance(source, datasets.Dataset):
            if split is not None:
                raise ValueError(f"split={split!r} only applies to a DatasetDict, not to a Dataset")
            return _read_hf_dataset(source, source_name or "<datasets.Dataset>")
    raise TypeError(
        f"source is {type(source).__name__}; expected a path (.jsonl, .json, .parquet, or a saved "
        "dataset directory), a datasets.Dataset / DatasetDict, or a list of row dicts"
    )


# ---------------------------------------------------------------------------------------------
# Loading


def _rename(row: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    if not renames:
        return row
    return {renames.get(key, key): value for key, value in row.items()}


def load_preferences(
    source: str | os.PathLike | Sequence[Mapping[str, Any]] | Any,
    *,
    split: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    identical: Literal["keep", "skip"] = "keep",
    columns: Mapping[str, str] | None = None,
    source_name: str | None = None,
) -> PreferenceDataset:
    """Load preference pairs in any TRL preference format, with stable content-hash ids.

    Args:
        source: a ``.jsonl`` / ``.json`` / ``.parquet`` file, a directory written by
            ``datasets`` ``save_to_disk`` (Dataset or DatasetDict), a ``datasets.Dataset`` /
            ``DatasetDict``, or a list of row dicts.
        split: the split of a DatasetDict (optional when it has exactly one).
        on_error: ``"raise"``: a malformed row raises :class:`MalformedRowError` naming the
            source, the 1-based line (JSONL) or row, and the problem. ``"skip"``: it is recorded
            in ``dataset.skipped`` and one :class:`PreferenceDataWarning` gives counts by kind.
        identical: ``"keep"`` (default) keeps rows whose chosen equals rejected, with a warning;
            ``"skip"`` records them in ``skipped`` (kind ``identical``).
        columns: source column names for ``prompt`` / ``chosen`` / ``rejected`` / ``pair_id``
            when they are called something else, e.g. ``{"chosen": "response_j"}``.
        source_name: the name used in messages and ``PreferencePair.source`` (default: the path).

    Returns:
        a :class:`PreferenceDataset`; each pair's ``row`` is its 0-based data row in the source
        (skipped rows count, blank JSONL lines do not).

    The prompt is explicit when the source has a ``prompt`` column (then every row needs one)
    and implicit otherwise, split off ``chosen`` / ``rejected`` by :func:`extract_prompt`, as
    DPOTrainer does. See the module docstring for ids and for what is an error or a warning.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if identical not in ("keep", "skip"):
        raise ValueError(f"identical must be 'keep' or 'skip', got {identical!r}")
    renames = _column_renames(columns)
    raw = _read_source(source, split, source_name)
    if not raw.rows:
        raise ValueError(f"{raw.name} is empty: no preference rows")
    if raw.columns is not None:
        for source_column, canonical in renames.items():
            if source_column in raw.columns and canonical in raw.columns and canonical not in renames:
                raise ValueError(
                    f"{raw.name} has both {source_column!r} and {canonical!r}: columns={{{canonical!r}: "
                    f"{source_column!r}}} would make two {canonical!r} columns"
                )
    present = None if raw.columns is None else {renames.get(c, c) for c in raw.columns}
    if present is not None:
        for required in ("chosen", "rejected"):
            if required not in present:
                hint = "" if columns else f"; pass columns={{{required!r}: <name>}} if it has another name"
                found = sorted(map(str, raw.columns or ()))
                raise ValueError(f"{raw.name} has no {required!r} column (columns: {found}){hint}")
    explicit_prompt = present is not None and "prompt" in present

    skipped: list[SkippedRow] = []
    kept: list[tuple[int, Text, Text, Text, dict[str, Any], Any]] = []  # row, p, c, r, metadata, stored id
    counts = Counter()
    first_format: tuple[bool, int] | None = None  # (conversational, line of the row that set it)

    def reject(row: int, line: int, problem: _RowProblem) -> None:
        if on_error == "raise":
            raise MalformedRowError(raw.name, line, raw.unit, problem.kind, problem.reason)
        skipped.append(SkippedRow(row, line, problem.kind, problem.reason))

    for row, (line, content) in enumerate(raw.rows):
        try:
            if isinstance(content, _RowProblem):
                raise content
            content = _rename(content, renames)
            for required in ("chosen", "rejected"):
                if required not in content:
                    raise _RowProblem("missing_field", f"no {required!r} field")
            metadata = {k: v for k, v in content.items() if k not in (*PAIR_COLUMNS, ID_COLUMN)}
            if explicit_prompt:
                if "prompt" not in content:
                    raise _RowProblem("missing_field", "no 'prompt' field (the data has a prompt column)")
                chosen, rejected = _check_responses(content["chosen"], content["rejected"])
                given_prompt = content["prompt"]
                if isinstance(given_prompt, str) and not isinstance(chosen, str):
                    # TRL's maybe_extract_prompt case: the conversation lives in chosen/rejected.
                    prompt_parts = None
                    metadata.setdefault("source_prompt", given_prompt)
                else:
                    prompt_parts = (_check_prompt(given_prompt, chosen), chosen, rejected)
            else:
                chosen, rejected = _check_responses(content["chosen"], content["rejected"])
                prompt_parts = None
            conversational = not isinstance(chosen, str)
            if first_format is None:
                first_format = (conversational, line)
            elif conversational != first_format[0]:
                kinds = ("standard (strings)", "conversational (message lists)")
                raise _RowProblem(
                    "format_mismatch",
                    f"row is {kinds[conversational]} but the dataset is {kinds[first_format[0]]} "
                    f"(set by {raw.unit} {first_format[1]})",
                )
            if chosen == rejected:
                if identical == "skip":
                    skipped.append(SkippedRow(row, line, "identical", "chosen is identical to rejected"))
                    continue
                counts["identical"] += 1
            if prompt_parts is None:
                if chosen != rejected and _prompt_split_index(chosen, rejected) <= 0:
                    counts["no_shared_prompt"] += 1
                prompt_parts = extract_prompt(chosen, rejected)
            kept.append((row, *prompt_parts, metadata, content.get(ID_COLUMN)))
        except _RowProblem as problem:
            reject(row, line, problem)

    if not kept:
        summary = ", ".join(f"{n} {kind}" for kind, n in Counter(s.kind for s in skipped).most_common())
        raise ValueError(f"{raw.name}: no valid rows; all {len(raw.rows)} were skipped ({summary})")

    pairs, n_duplicates, n_mismatched = _assign_ids(kept, raw.name)
    _warn_summary(raw.name, raw.unit, len(raw.rows), skipped, counts, n_duplicates, n_mismatched)
    return PreferenceDataset(
        pairs, source=raw.name, skipped=skipped, n_duplicates=n_duplicates, n_identical=counts["identical"]
    )


def _column_renames(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Source name → canonical name, from the user's canonical → source mapping."""
    if not columns:
        return {}
    unknown = set(columns) - {*PAIR_COLUMNS, ID_COLUMN}
    if unknown:
        raise ValueError(f"columns keys must be among {[*PAIR_COLUMNS, ID_COLUMN]}, got {sorted(unknown)}")
    return {source: canonical for canonical, source in columns.items()}


def _assign_ids(
    kept: list[tuple[int, Text, Text, Text, dict[str, Any], Any]], name: str
) -> tuple[list[PreferencePair], int, int]:
    """Content ids with ``#k`` suffixes for repeats; keep a stored id whose hash part matches."""
    bases = [pair_id(prompt, chosen, rejected) for _, prompt, chosen, rejected, _, _ in kept]
    ids: list[str | None] = [None] * len(kept)
    taken: set[str] = set()
    n_mismatched = 0
    # Pass 1: stored ids that match their content claim their id, first come first served.
    for i, (_, _, _, _, metadata, stored) in enumerate(kept):
        if stored is None:
            continue
        match = _ID_PATTERN.match(stored) if isinstance(stored, str) else None
        if match and match.group(1) == bases[i]:
            if stored not in taken:
                ids[i] = stored
                taken.add(stored)
        else:
            n_mismatched += 1
            # The oldest known id wins: a source_pair_id column from an earlier save is kept.
            metadata.setdefault("source_pair_id", stored)
    # Pass 2: everything else gets the bare hash or the smallest free #k, in order.
    next_suffix: dict[str, int] = {}
    seen: Counter[str] = Counter()
    n_duplicates = 0
    for i, base in enumerate(bases):
        seen[base] += 1
        if seen[base] > 1:
            n_duplicates += 1
        if ids[i] is not None:
            continue
        if base not in taken:
            candidate = base
        else:
            k = next_suffix.get(base, 1)
            while f"{base}#{k}" in taken:
                k += 1
            next_suffix[base] = k + 1
            candidate = f"{base}#{k}"
        ids[i] = candidate
        taken.add(candidate)
    pairs = [
        PreferencePair(ids[i], prompt, chosen, rejected, row, name, metadata)
        for i, (row, prompt, chosen, rejected, metadata, _) in enumerate(kept)
    ]
    return pairs, n_duplicates, n_mismatched


def _warn_summary(
    name: str,
    unit: str,
    n_rows: int,
    skipped: list[SkippedRow],
    counts: Counter,
    n_duplicates: int,
    n_mismatched: int,
) -> None:
    notes = []
    if skipped:
        by_kind = ", ".join(f"{n} {kind}" for kind, n in Counter(s.kind for s in skipped).most_common())
        first = skipped[0]
        notes.append(
            f"skipped {len(skipped)} of {n_rows} rows ({by_kind}; first: {unit} {first.line}, "
            f"{first.reason}); see dataset.skipped"
        )
    if counts["identical"]:
        notes.append(f"{counts['identical']} rows have chosen identical to rejected (kept; they carry no signal)")
    if n_duplicates:
        notes.append(f"{n_duplicates} rows repeat the content of an earlier row (kept with '#k' ids)")
    if n_mismatched:
        notes.append(
            f"{n_mismatched} stored pair_id values do not match the content (recomputed; the stored "
            "value is in metadata['source_pair_id'])"
        )
    if counts["no_shared_prompt"]:
        notes.append(
            f"{counts['no_shared_prompt']} rows have no shared leading part between chosen and rejected "
            "(implicit prompt is empty, or TRL's extract_prompt quirk applies)"
        )
    if notes:
        warnings.warn(f"{name}: " + "; ".join(notes), PreferenceDataWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Writing


def _json_ready(value: Any) -> Any:
    """NaN metadata (pandas' missing value) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def save_preferences(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> Path:
    """Write pairs in TRL's format to ``.jsonl`` or ``.parquet``; returns the path.

    Columns: ``prompt``, ``chosen``, ``rejected`` (prompt always explicit), every metadata
    column, then ``pair_id``. Loading the file again gives the same ids. A metadata column whose
    values Arrow cannot hold in one column (mixed types) is a ValueError naming the column.
    NaN metadata values are written as null in JSONL.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", *_PARQUET_SUFFIXES):
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; save_preferences writes .jsonl or .parquet")
    rows = pairs.to_rows() if isinstance(pairs, PreferenceDataset) else [_pair_to_row(p) for p in pairs]
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row[ID_COLUMN] in seen:
            raise ValueError(f"duplicate pair_id {row[ID_COLUMN]!r} at positions {seen[row[ID_COLUMN]]} and {i}")
        seen[row[ID_COLUMN]] = i
    names = list(PAIR_COLUMNS)
    for row in rows:  # metadata columns in order of first appearance
        names.extend(key for key in row if key not in names and key != ID_COLUMN)
    names.append(ID_COLUMN)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as out:
            for i, row in enumerate(rows):
                try:
                    out.write(json.dumps(_json_ready(row), ensure_ascii=False, allow_nan=False) + "\n")
                except TypeError as error:
                    where = f"{path}: pair {row[ID_COLUMN]} (position {i})"
                    raise ValueError(f"{where} is not JSON-serialisable: {error}") from None
        return path
    arrays = []
    for name in names:
        try:
            arrays.append(pa.array([row.get(name) for row in rows]))
        except (pa.ArrowException, TypeError) as error:
            raise ValueError(f"{path}: column {name!r} cannot be stored in Parquet ({error})") from None
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    return path


__all__ = [
    "ID_COLUMN",
    "PAIR_COLUMNS",
    "MalformedRowError",
    "Message",
    "PreferenceDataWarning",
    "PreferenceDataset",
    "PreferencePair",
    "SkippedRow",
    "Text",
    "extract_prompt",
    "load_preferences",
    "make_pair",
    "pair_id",
    "save_preferences",
]
