"""Writing preference pairs in TRL's format (JSONL or Parquet), ready for any DPO trainer."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headwater.data.dataset import PreferenceDataset, pair_to_row
from headwater.data.pairs import ID_COLUMN, PAIR_COLUMNS, PreferencePair
from headwater.data.readers import PARQUET_SUFFIXES
from headwater.engine import atomic


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
    NaN metadata values are written as null in JSONL. The file is written atomically: a failure
    (text that is not valid Unicode, a column Arrow cannot hold) leaves ``path`` as it was.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", *PARQUET_SUFFIXES):
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; save_preferences writes .jsonl or .parquet")
    rows = pairs.to_rows() if isinstance(pairs, PreferenceDataset) else [pair_to_row(p) for p in pairs]
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row[ID_COLUMN] in seen:
            raise ValueError(f"duplicate pair_id {row[ID_COLUMN]!r} at positions {seen[row[ID_COLUMN]]} and {i}")
        seen[row[ID_COLUMN]] = i
    names = list(PAIR_COLUMNS)
    for row in rows:  # metadata columns in order of first appearance
        names.extend(key for key in row if key not in names and key != ID_COLUMN)
    names.append(ID_COLUMN)
    if suffix == ".jsonl":
        lines = []
        for i, row in enumerate(rows):
            where = f"{path}: pair {row[ID_COLUMN]} (position {i})"
            try:
                lines.append((json.dumps(_json_ready(row), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
            except TypeError as error:
                raise ValueError(f"{where} is not JSON-serialisable: {error}") from None
            except UnicodeEncodeError as error:  # a lone surrogate cannot be written as UTF-8
                raise ValueError(f"{where} holds text that is not valid Unicode ({error.reason} at "
                                 f"{error.object[max(0, error.start - 20):error.end + 20]!r})") from None
        atomic.write_bytes(path, b"".join(lines))
        return path
    arrays = []
    for name in names:
        try:
            arrays.append(pa.array([row.get(name) for row in rows]))
        except (pa.ArrowException, TypeError, UnicodeEncodeError) as error:
            raise ValueError(f"{path}: column {name!r} cannot be stored in Parquet ({error})") from None
    try:
        with atomic.atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_arrays(arrays, names=names), tmp)
    except pa.ArrowException as error:
        raise ValueError(f"{path}: the pairs cannot be written as Parquet ({error})") from None
    return path
