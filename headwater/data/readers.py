"""Reading preference data in any TRL format into a :class:`PreferenceDataset`.

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
    ``invalid_text``    text holding a lone surrogate (e.g. JSON ``"\\ud800"``): not valid Unicode
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

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from headwater.data.dataset import PreferenceDataset
from headwater.data.pairs import (
    ID_COLUMN,
    ID_PATTERN,
    PAIR_COLUMNS,
    MalformedRowError,
    PreferenceDataWarning,
    PreferencePair,
    RowProblem,
    SkippedRow,
    Text,
    check_prompt,
    check_responses,
    describe_value,
    extract_prompt,
    free_id,
    pair_id,
    prompt_split_index,
)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class _RawRows:
    """What a reader hands to the normaliser: rows (dict, or a problem) and the column names."""

    name: str
    unit: str  # "line" (JSONL) or "row" (tables, lists)
    rows: list[tuple[int, dict[str, Any] | RowProblem]]  # (1-based line/row, content)
    columns: set[str] | None  # None: not known (no object rows)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a small JSONL file.

    Raises:
        ValueError: a line that is not valid JSON, naming ``file:line``.
    """
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None
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
    rows: list[tuple[int, dict[str, Any] | RowProblem]] = []
    columns: set[str] = set()
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; they are not rows
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            problem = RowProblem("invalid_json", f"line is not valid UTF-8 ({error})")
            rows.append((number, problem))
            continue
        except json.JSONDecodeError as error:
            problem = RowProblem("invalid_json", f"invalid JSON ({error.msg} at column {error.colno})")
            rows.append((number, problem))
            continue
        if not isinstance(value, dict):
            got = f"{type(value).__name__} {describe_value(value)}"
            rows.append((number, RowProblem("not_an_object", f"expected a JSON object, got {got}")))
            continue
        columns.update(value)
        rows.append((number, value))
    has_objects = any(isinstance(content, dict) for _, content in rows)
    return _RawRows(name, "line", rows, columns if has_objects else None)


def _rows_from_objects(items: Any, name: str) -> _RawRows:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name}: expected a list of row dicts, got {type(items).__name__}")
    rows: list[tuple[int, dict[str, Any] | RowProblem]] = []
    columns: set[str] = set()
    for number, value in enumerate(items, start=1):
        if isinstance(value, Mapping):
            columns.update(value)
            rows.append((number, dict(value)))
        else:
            got = f"{type(value).__name__} {describe_value(value)}"
            rows.append((number, RowProblem("not_an_object", f"expected an object (dict), got {got}")))
    has_objects = any(isinstance(content, dict) for _, content in rows)
    return _RawRows(name, "row", rows, columns if has_objects else None)


def _read_parquet(path: Path) -> _RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    rows: list[tuple[int, dict[str, Any] | RowProblem]] = []
    for batch in parquet.iter_batches(batch_size=4096):
        start = len(rows) + 1
        rows.extend(enumerate(batch.to_pylist(), start=start))
    return _RawRows(str(path), "row", rows, set(parquet.schema_arrow.names))


def _read_hf_dataset(dataset: Any, name: str) -> _RawRows:
    rows: list[tuple[int, dict[str, Any] | RowProblem]] = []
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
        if suffix in JSONL_SUFFIXES:
            raw = _read_jsonl(path)
        elif suffix in PARQUET_SUFFIXES:
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

    def reject(row: int, line: int, problem: RowProblem) -> None:
        if on_error == "raise":
            raise MalformedRowError(raw.name, line, raw.unit, problem.kind, problem.reason)
        skipped.append(SkippedRow(row, line, problem.kind, problem.reason))

    for row, (line, content) in enumerate(raw.rows):
        try:
            if isinstance(content, RowProblem):
                raise content
            content = _rename(content, renames)
            for required in ("chosen", "rejected"):
                if required not in content:
                    raise RowProblem("missing_field", f"no {required!r} field")
            metadata = {k: v for k, v in content.items() if k not in (*PAIR_COLUMNS, ID_COLUMN)}
            if explicit_prompt:
                if "prompt" not in content:
                    raise RowProblem("missing_field", "no 'prompt' field (the data has a prompt column)")
                chosen, rejected = check_responses(content["chosen"], content["rejected"])
                given_prompt = content["prompt"]
                if isinstance(given_prompt, str) and not isinstance(chosen, str):
                    # TRL's maybe_extract_prompt case: the conversation lives in chosen/rejected.
                    prompt_parts = None
                    metadata.setdefault("source_prompt", given_prompt)
                else:
                    prompt_parts = (check_prompt(given_prompt, chosen), chosen, rejected)
            else:
                chosen, rejected = check_responses(content["chosen"], content["rejected"])
                prompt_parts = None
            conversational = not isinstance(chosen, str)
            if first_format is None:
                first_format = (conversational, line)
            elif conversational != first_format[0]:
                kinds = ("standard (strings)", "conversational (message lists)")
                raise RowProblem(
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
                if chosen != rejected and prompt_split_index(chosen, rejected) <= 0:
                    counts["no_shared_prompt"] += 1
                prompt_parts = extract_prompt(chosen, rejected)
            kept.append((row, *prompt_parts, metadata, content.get(ID_COLUMN)))
        except RowProblem as problem:
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
        match = ID_PATTERN.match(stored) if isinstance(stored, str) else None
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
        candidate = free_id(base, taken, start=next_suffix.get(base, 1))
        if candidate != base:  # the next repeat of this content starts looking after this k
            next_suffix[base] = int(candidate.rsplit("#", 1)[1]) + 1
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
