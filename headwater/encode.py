"""Workflows behind ``headwater encode`` and ``headwater attribute --probe-data``.

``encode_dataset`` loads a preference dataset and M0, computes every pair's datapoint vector at
block ℓ and writes a vector store whose manifest records the model, layer, dtype, tokenisation
settings, dataset fingerprint and the pairs that were skipped, with their reasons.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from headwater.data import iter_jsonl, load_preferences
from headwater.engine import distributed
from headwater.engine.engine import DEFAULT_SHARD_PAIRS, Engine
from headwater.engine.models import load_model
from headwater.engine.store import check_compatible, model_fingerprint
from headwater.engine.tokenization import TokenizationSettings
from headwater.vectors import ProbingVector, probing_vector

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
    resume: bool = False,
    overwrite: bool = False,
    store_dtype: str = "float32",
    shard_pairs: int = DEFAULT_SHARD_PAIRS,
    share_prompt: bool | str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Datapoint vectors of every pair of ``data`` on the model at ``model_path``, into ``out_dir``.

    ``model`` / ``tokenizer`` may be passed already loaded (``model_path`` is then only recorded).
    Under torchrun (``WORLD_SIZE`` > 1) every process runs this same call: it joins the process
    group, loads the model on its own device, encodes its share of the shards, and rank 0 writes
    the manifest. Returns a summary: counts, the resolved layer, throughput and the store path
    (``rank`` and ``world_size`` say which process it comes from).
    """
    rank = distributed.init_from_env(device)
    dataset = load_preferences(data, split=split, on_error=on_error)
    if model is None:
        model, tokenizer = load_model(model_path, dtype=dtype, device=distributed.device_for(device, rank))
    engine = Engine(
        model, tokenizer, layer=layer, settings=settings, max_tokens_per_batch=max_tokens_per_batch,
        share_prompt=share_prompt, model_name=str(model_path),
    )
    store = engine.encode_pairs(
        dataset, out_dir, resume=resume, overwrite=overwrite, shard_pairs=shard_pairs, store_dtype=store_dtype,
        progress=progress, dataset_name=str(data),
    )
    skipped = store.manifest.get("skipped_pairs", [])
    for entry in skipped[:10]:
        LOG.warning("skipped pair %s (position %s): %s", entry["pair_id"], entry["position"], entry["reason"])
    return {
        **store.summary,
        "n_skipped_rows": len(store.manifest.get("skipped_rows", [])),
        "rank": rank.rank,
    }


def read_labelled_responses(path: str | Path) -> tuple[list[Any], list[Any], list[bool]]:
    """Rows ``{"prompt", "response", "exhibits"}`` from a JSONL file, each checked."""
    prompts, responses, labels = [], [], []
    for line_no, row in iter_jsonl(path):
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
