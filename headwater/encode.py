"""Workflows behind ``headwater encode`` and ``headwater attribute --probe-data``.

``encode_dataset`` loads a preference dataset and M0, computes every pair's datapoint vector at
block ℓ and writes a vector store whose manifest records the model, layer, dtype, tokenisation
settings, dataset fingerprint and the pairs that were skipped, with their reasons.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from headwater.data import load_preferences
from headwater.engine.models import load_model, resolve_layer
from headwater.engine.store import check_compatible, model_fingerprint, write_store
from headwater.engine.tokenization import TokenizationSettings
from headwater.vectors import ProbingVector, datapoint_vectors, probing_vector

LOG = logging.getLogger(__name__)


def encode_dataset(
    *,
    model_path: str | Path,
    data: str | Path,
    out_dir: str | Path,
    layer: int | None = None,
    settings: TokenizationSettings = TokenizationSettings(),
    dtype: str = "auto",
    device: str = "cpu",
    split: str | None = None,
    on_error: str = "raise",
    max_tokens_per_batch: int = 16384,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Datapoint vectors of every pair of ``data`` on the model at ``model_path``, into ``out_dir``.

    ``model`` / ``tokenizer`` may be passed already loaded (``model_path`` is then only recorded).
    Returns a summary: counts, the resolved layer, throughput and the store path.
    """
    start = time.perf_counter()
    dataset = load_preferences(data, split=split, on_error=on_error)
    if model is None:
        model, tokenizer = load_model(model_path, dtype=dtype, device=device)
    ell = resolve_layer(model, layer)
    pairs = list(dataset)
    with tqdm(total=2 * len(pairs), desc=f"encoding (layer {ell})", unit="seq", disable=None) as bar:
        dp = datapoint_vectors(
            model, tokenizer, pairs, layer=ell, settings=settings,
            max_tokens_per_batch=max_tokens_per_batch, progress=bar.update,
        )
    manifest = {
        "model": str(model_path),
        "model_fingerprint": model_fingerprint(model),
        "layer": ell,
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "tokenization": settings.to_dict(),
        "dataset": str(data),
        "dataset_fingerprint": dataset.fingerprint,
        "n_pairs_in_dataset": len(pairs),
        "n_truncated": dp.n_truncated,
        "skipped_rows": [s._asdict() for s in dataset.skipped],
        "skipped_pairs": [{"pair_id": pid, "reason": reason} for pid, reason in dp.skipped],
    }
    write_store(out_dir, dp.pair_ids, dp.vectors, manifest)
    seconds = time.perf_counter() - start
    summary = {
        "out": str(out_dir),
        "layer": ell,
        "n_pairs": len(pairs),
        "n_encoded": len(dp.pair_ids),
        "n_skipped_rows": len(dataset.skipped),
        "n_skipped_pairs": len(dp.skipped),
        "n_truncated": dp.n_truncated,
        "seconds": round(seconds, 2),
        "pairs_per_second": round(len(pairs) / seconds, 1) if seconds > 0 else None,
    }
    for pid, reason in dp.skipped[:10]:
        LOG.warning("skipped pair %s: %s", pid, reason)
    return summary


def read_labelled_responses(path: str | Path) -> tuple[list[Any], list[Any], list[bool]]:
    """Rows ``{"prompt", "response", "exhibits"}`` from a JSONL file, each checked."""
    prompts, responses, labels = [], [], []
    with Path(path).open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            missing = [k for k in ("prompt", "response", "exhibits") if not isinstance(row, dict) or k not in row]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {missing}")
            if not isinstance(row["exhibits"], bool):
                raise ValueError(f"{path}:{line_no}: 'exhibits' must be true or false, got {row['exhibits']!r}")
            prompts.append(row["prompt"])
            responses.append(row["response"])
            labels.append(row["exhibits"])
    if not prompts:
        raise ValueError(f"{path}: no labelled responses")
    return prompts, responses, labels


def probe_from_file(path: str | Path, manifest: dict[str, Any], *, model: Any = None, tokenizer: Any = None) -> ProbingVector:
    """The probing vector from labelled responses, on the model and layer a store was made with.

    The model is loaded from the manifest's path and must match its fingerprint, so that the
    probe and the datapoint vectors live in the same activation space.
    """
    prompts, responses, labels = read_labelled_responses(path)
    if model is None:
        model, tokenizer = load_model(manifest["model"], dtype=manifest.get("model_dtype", "auto"))
    check_compatible(manifest, model_fingerprint=model_fingerprint(model))
    settings = TokenizationSettings(**manifest["tokenization"])
    return probing_vector(model, tokenizer, prompts, responses, labels, layer=manifest["layer"], settings=settings)
