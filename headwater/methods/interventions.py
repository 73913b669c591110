"""Interventions on a preference dataset (method.md §4): filter, switch or reweight the top-N pairs
of a ranking, or drop the pairs of a data source.

Every intervention returns the modified pairs and a manifest (mode, N, the changed pair ids, counts)
so that a retrained model can be traced back to exactly what was changed. :func:`write_intervention`
writes both: a TRL-ready dataset (``save_preferences``) and ``manifest.json``.

- **filter**: the top-N pairs are left out.
- **switch**: chosen and rejected of the top-N pairs are swapped. A switched pair has new content,
  hence a new content-hash id (:func:`headwater.data.make_pair`; a clash gets the next free ``#k``); its original id is kept in the
  ``switched_from`` metadata column.
- **reweight**: every pair is kept and gets a ``weight`` metadata column: ``weight`` for the top-N,
  1.0 for the others (an existing ``weight`` column is overwritten). ``headwater retrain`` scales
  each pair's DPO loss by it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from headwater.data import PreferenceDataset, PreferencePair, free_id, load_preferences, make_pair, save_preferences
from headwater.engine import atomic
from headwater.methods.attribution import Ranking

MODES = ("filter", "switch", "reweight")
Mode = Literal["filter", "switch", "reweight"]
SWITCHED_FROM = "switched_from"
WEIGHT = "weight"
MANIFEST = "manifest.json"
_EXAMPLES = 5


def _check_ranking(dataset: PreferenceDataset, ranking: Ranking) -> None:
    """Every ranked id must be a pair of the dataset (a ranking of another dataset is an error)."""
    missing = [pid for pid in ranking.pair_ids if pid not in dataset]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(ranking.pair_ids)} ranked pair ids are not in the dataset "
            f"{dataset.source or ''} ({len(dataset)} pairs), e.g. {missing[:_EXAMPLES]}; "
            "was the ranking computed from this dataset?"
        )
    if len(set(ranking.pair_ids)) != len(ranking.pair_ids):
        raise ValueError("the ranking lists some pair id more than once")


def _switch(pair: PreferencePair, taken: set[str]) -> PreferencePair:
    swapped = make_pair(
        pair.prompt, pair.rejected, pair.chosen, row=pair.row, source=pair.source,
        metadata={**pair.metadata, SWITCHED_FROM: pair.pair_id},
    )
    new_id = free_id(swapped.pair_id, taken)
    if new_id != swapped.pair_id:
        swapped = PreferencePair(new_id, swapped.prompt, swapped.chosen, swapped.rejected, swapped.row,
                                 swapped.source, swapped.metadata)
    return swapped


def intervene(
    dataset: PreferenceDataset,
    ranking: Ranking | str | Path,
    *,
    mode: Mode = "filter",
    top: int,
    weight: float = 0.0,
) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Apply one intervention to the ``top`` highest-ranked pairs.

    Args:
        dataset: the preference pairs the ranking was computed from.
        ranking: a :class:`Ranking` or the path of a saved one (.parquet / .jsonl). It may rank a
            subset of the dataset, but every ranked id must be in the dataset.
        mode: ``"filter"``, ``"switch"`` or ``"reweight"`` (see the module docstring).
        top: N, how many of the highest-ranked pairs to change (0 ≤ N ≤ ranked pairs).
        weight: the weight of the top-N pairs in ``"reweight"`` mode (finite, ≥ 0).

    Returns:
        ``(pairs, manifest)``: the modified dataset in the original order (switched pairs in
        place), and a JSON-ready dict with ``mode``, ``top``, ``changed_pair_ids`` (original ids,
        in rank order), counts and fingerprints; ``switch`` adds ``switched`` {old id: new id}.

    Raises:
        ValueError: unknown mode, N out of range, a bad weight, or ranked ids not in the dataset.
    """
    if mode not in MODES:
        raise ValueError(f"unknown intervention mode {mode!r}; choose one of {list(MODES)}")
    ranking_path = None
    if not isinstance(ranking, Ranking):
        ranking_path = str(ranking)
        ranking = Ranking.load(ranking)
    if isinstance(top, bool) or not isinstance(top, int):
        raise ValueError(f"`top` must be an integer, got {top!r}")
    if top < 0:
        raise ValueError(f"`top` must be ≥ 0, got {top}")
    if top > len(ranking.pair_ids):
        raise ValueError(f"`top` is {top} but the ranking has only {len(ranking.pair_ids)} pairs")
    if mode == "reweight" and not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"`weight` must be finite and ≥ 0, got {weight}")
    _check_ranking(dataset, ranking)

    changed = ranking.pair_ids[:top]
    chosen_set = set(changed)
    manifest: dict[str, Any] = {
        "mode": mode,
        "top": top,
        "ranking": ranking_path,
        "ranking_method": ranking.method,
        "changed_pair_ids": list(changed),
        "source": dataset.source,
        "n_input": len(dataset),
        "input_fingerprint": dataset.fingerprint,
    }
    if mode == "filter":
        out = [p for p in dataset if p.pair_id not in chosen_set]
    elif mode == "switch":
        taken = {p.pair_id for p in dataset if p.pair_id not in chosen_set}
        out, switched = [], {}
        for pair in dataset:
            if pair.pair_id in chosen_set:
                new = _switch(pair, taken)
                taken.add(new.pair_id)
                switched[pair.pair_id] = new.pair_id
                pair = new
            out.append(pair)
        manifest["switched"] = {pid: switched[pid] for pid in changed}
    else:
        out = [
            PreferencePair(p.pair_id, p.prompt, p.chosen, p.rejected, p.row, p.source,
                           {**p.metadata, WEIGHT: float(weight) if p.pair_id in chosen_set else 1.0})
            for p in dataset
        ]
        manifest["weight"] = float(weight)
    result = PreferenceDataset(out, source=dataset.source)
    manifest.update(n_changed=len(changed), n_output=len(result), output_fingerprint=result.fingerprint)
    return result, manifest


def drop_source(
    dataset: PreferenceDataset, values: Iterable[Any], *, column: str = "source"
) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Leave out every pair whose metadata ``column`` holds one of ``values`` (a data-source filter).

    The manifest counts the pairs dropped per value and lists the values that matched no pair
    (``unmatched_values``).

    Raises:
        ValueError: no value given, no pair has the column (a misspelt column name), or no value
            matches any pair.
    """
    values = list(values)
    if not values:
        raise ValueError("drop_source needs at least one value to drop")
    if not any(column in p.metadata for p in dataset):
        columns = sorted({k for p in dataset for k in p.metadata})
        raise ValueError(f"no pair has a metadata column {column!r}; the columns are {columns}")
    drop = set(map(str, values))
    changed = [p.pair_id for p in dataset if column in p.metadata and str(p.metadata[column]) in drop]
    removed = set(changed)
    per_value = {v: sum(str(p.metadata.get(column)) == v for p in dataset if column in p.metadata) for v in sorted(drop)}
    unmatched = [v for v, n in per_value.items() if n == 0]
    if len(unmatched) == len(per_value):
        present = sorted({str(p.metadata[column]) for p in dataset if column in p.metadata})
        raise ValueError(f"no pair has {column} = {unmatched}; the values present are {present[:20]}")
    result = PreferenceDataset([p for p in dataset if p.pair_id not in removed], source=dataset.source)
    manifest = {
        "mode": "drop_source", "column": column, "values": sorted(drop), "changed_pair_ids": changed,
        "dropped_per_value": per_value, "unmatched_values": unmatched,
        "source": dataset.source, "n_input": len(dataset), "input_fingerprint": dataset.fingerprint,
        "n_changed": len(changed), "n_output": len(result), "output_fingerprint": result.fingerprint,
    }
    return result, manifest


def apply_interventions(
    dataset: PreferenceDataset,
    *,
    ranking: Ranking | str | Path | None = None,
    mode: Mode = "filter",
    top: int | None = None,
    weight: float = 0.0,
    drop_values: Sequence[Any] = (),
    source_column: str = "source",
) -> tuple[PreferenceDataset, dict[str, Any]]:
    """``headwater intervene``: drop the pairs of data sources, then change the top-N of a ranking.

    The ranking is checked against the whole dataset first (a ranking of other data is an error);
    its pairs that the source filter dropped are then left out of it, and counted in the manifest
    (``n_ranked_dropped_with_source``), so N counts only pairs that are still there. Rows the
    loader skipped (``dataset.skipped``) are listed in the manifest (``skipped_rows``).

    Returns:
        ``(pairs, manifest)``; with both steps the manifest is the last step's with ``steps``.
    """
    if ranking is None and not drop_values:
        raise ValueError("give --rankings with --top, or --drop-source (ranking= with top=, or drop_values=)")
    if ranking is not None and top is None:
        raise ValueError("--top is required with --rankings (top= with ranking=)")
    loaded = ranking if ranking is None or isinstance(ranking, Ranking) else Ranking.load(ranking)
    if loaded is not None:
        _check_ranking(dataset, loaded)
    skipped_rows = [s._asdict() for s in dataset.skipped]
    manifests = []
    if drop_values:
        dataset, m = drop_source(dataset, drop_values, column=source_column)
        manifests.append(m)
    if loaded is not None:
        keep = [i for i, pid in enumerate(loaded.pair_ids) if pid in dataset]
        dropped = len(loaded.pair_ids) - len(keep)
        if dropped:
            loaded = Ranking([loaded.pair_ids[i] for i in keep], loaded.scores[keep], loaded.method)
        dataset, m = intervene(dataset, loaded, mode=mode, top=top, weight=weight)
        m["ranking"] = None if isinstance(ranking, Ranking) else str(ranking)
        m["n_ranked_dropped_with_source"] = dropped
        manifests.append(m)
    manifest = manifests[-1] if len(manifests) == 1 else {**manifests[-1], "steps": manifests}
    manifest["n_input"] = manifests[0]["n_input"]
    manifest["skipped_rows"] = skipped_rows
    return dataset, manifest


def write_intervention(
    out_dir: str | Path,
    pairs: PreferenceDataset | Sequence[PreferencePair],
    manifest: dict[str, Any],
    *,
    formats: Sequence[str] = ("jsonl",),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``pairs.jsonl`` and/or ``pairs.parquet`` (TRL's format) and ``manifest.json``.

    Every file is written atomically and the manifest last: it records each pairs file's sha256,
    the number of pairs and their fingerprint, which :func:`read_intervention` checks. Replacing
    an intervention removes the old manifest first, so a run that fails half-way leaves a
    directory that readers refuse, never an old manifest beside new pairs.

    Returns:
        ``{"jsonl": path, "parquet": path, "manifest": path}`` for what was written.

    Raises:
        FileExistsError: ``out_dir`` already holds a manifest and ``overwrite`` is off.
        ValueError: an unknown format, or pairs that cannot be written (nothing is replaced then).
    """
    bad = [f for f in formats if f not in ("jsonl", "parquet")]
    if bad or not formats:
        raise ValueError(f"formats must be 'jsonl' and/or 'parquet', got {list(formats)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a directory")
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an intervention ({MANIFEST}); pass overwrite to replace it")
    dataset = pairs if isinstance(pairs, PreferenceDataset) else PreferenceDataset(pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    written = {fmt: save_preferences(dataset, out / f"pairs.{fmt}") for fmt in formats}
    manifest = {
        **manifest,
        "files": {fmt: path.name for fmt, path in written.items()},
        "sha256": {path.name: atomic.sha256_file(path) for path in written.values()},
        "n_output": len(dataset),
        "output_fingerprint": dataset.fingerprint,
    }
    atomic.write_json(out / MANIFEST, manifest)
    return {**written, "manifest": out / MANIFEST}


def read_intervention(directory: str | Path) -> tuple[PreferenceDataset, dict[str, Any]]:
    """The pairs and manifest of a :func:`write_intervention` directory, checked against each other.

    Raises:
        ValueError: no manifest (an interrupted write, or not an intervention), a pairs file whose
            checksum, pair count or fingerprint differs from the manifest's.
    """
    out = Path(directory)
    path = out / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out} holds no {MANIFEST}: not an intervention, or one whose writing was interrupted "
                         "(run headwater intervene again)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    name = (files or {}).get("parquet") or (files or {}).get("jsonl")
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{path} names no pairs file of its directory")
    checksum = (manifest.get("sha256") or {}).get(name)
    if checksum is not None and (not (out / name).is_file() or atomic.sha256_file(out / name) != checksum):
        raise ValueError(f"{out / name} is missing or does not match the checksum in {path}; the data is damaged")
    dataset = load_preferences(out / name)
    for key, value in (("n_output", len(dataset)), ("output_fingerprint", dataset.fingerprint)):
        if key in manifest and manifest[key] != value:
            raise ValueError(f"{out / name} has {key} {value!r} but {path} says {manifest[key]!r}")
    return dataset, manifest


__all__ = ["MODES", "SWITCHED_FROM", "WEIGHT", "apply_interventions", "drop_source", "intervene", "read_intervention",
           "write_intervention"]
