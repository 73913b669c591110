"""Workflows behind ``headwater encode`` and ``headwater attribute``.

:func:`encode_dataset` loads a preference dataset and M0, computes every pair's datapoint vector
at block ℓ and writes a vector store whose manifest records the model, layer, dtype, tokenisation
settings, dataset fingerprint and the pairs that were skipped, with their reasons.

:func:`attribute_store` ranks the pairs of a store against saved behaviour vectors (a vector bank,
checked against the store's model and layer) or against the probing vector of labelled responses
(built on the store's own model and layer), streaming the store's memory-mapped shards.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from headwater.data import load_preferences, read_labelled_responses
from headwater.engine import distributed
from headwater.engine.engine import DEFAULT_SHARD_PAIRS, Engine
from headwater.engine.models import load_model
from headwater.engine.store import StoreError, VectorStore, check_compatible, model_fingerprint
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.attribution import Ranking, rank_pairs
from headwater.methods.vectors import ProbingVector, VectorBank, probing_vector

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
        share_prompt=share_prompt, model_name=str(model_path), on_error=on_error,
    )
    store = engine.encode_pairs(
        dataset, out_dir, resume=resume, overwrite=overwrite, shard_pairs=shard_pairs, store_dtype=store_dtype,
        progress=progress, dataset_name=str(data),
    )
    skipped = store.manifest.get("skipped_pairs", [])
    for entry in skipped[:10]:
        LOG.warning("skipped pair %s (position %s): %s", entry["pair_id"], entry["position"], entry["reason"])
    if len(store) == 0:
        kinds = Counter(str(entry["reason"]).split(":")[0] for entry in skipped)
        raise ValueError(
            f"none of the {len(dataset)} pairs could be encoded ({', '.join(f'{n} {k}' for k, n in kinds.most_common())}); "
            f"{out_dir} records every skipped pair with its reason in manifest.json"
        )
    return {
        **store.summary,
        "n_skipped_rows": len(store.manifest.get("skipped_rows", [])),
        "rank": rank.rank,
    }


def store_model_settings(manifest: dict[str, Any]) -> tuple[str, int, TokenizationSettings, str]:
    """``(model path, layer, tokenisation, model dtype)`` a store was made with, from its manifest.

    Raises:
        StoreError: the manifest lacks one of them or holds one of the wrong type (a store made
            by an older or a foreign writer), naming the key.
    """
    for key, kind in (("model", str), ("layer", int), ("tokenization", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise StoreError(f"the store's manifest has no valid {key!r} (got {manifest.get(key)!r:.60}); "
                             "it was not written by headwater encode")
    try:
        settings = TokenizationSettings(**manifest["tokenization"])
    except (TypeError, ValueError) as err:
        raise StoreError(f"the store's manifest has an invalid 'tokenization' ({err})") from None
    return manifest["model"], manifest["layer"], settings, str(manifest.get("model_dtype", "auto"))


def probe_from_file(path: str | Path, manifest: dict[str, Any], *, model: Any = None, tokenizer: Any = None) -> ProbingVector:
    """The probing vector from labelled responses, on the model and layer a store was made with.

    The model is loaded from the manifest's path and must match its fingerprint, so that the
    probe and the datapoint vectors live in the same activation space.
    """
    prompts, responses, labels = read_labelled_responses(path)
    model_path, layer, settings, model_dtype = store_model_settings(manifest)
    if model is None:
        model, tokenizer = load_model(model_path, dtype=model_dtype)
    check_compatible(manifest, model_fingerprint=model_fingerprint(model))
    return probing_vector(model, tokenizer, prompts, responses, labels, layer=layer, settings=settings)


def bank_vectors(path: str | Path, store: VectorStore, *, store_path: str | Path | None = None) -> torch.Tensor:
    """[S, d] vectors of a vector bank, after checking its provenance against the store.

    Vectors saved with their provenance (``headwater behaviors``) must come from the store's model
    and layer: cosines between two models' residual streams mean nothing.
    """
    bank = VectorBank.load(path)
    layer = bank.metadata.get("layer")
    check_compatible(
        store.manifest, what=f"{store_path or store.root} (for behaviour vectors {path})",
        model_fingerprint=bank.metadata.get("model_fingerprint"),
        layer=int(layer) if layer is not None and layer.lstrip("-").isdigit() else None,
    )
    return bank.vectors


def attribute_store(store_path: str | Path, *, behavior: str | Path | None = None,
                    probe_data: str | Path | None = None) -> Ranking:
    """Rank every pair of a vector store by cosine with behaviour vectors (one of the two sources).

    Args:
        store_path: a store from ``headwater encode`` (opened with every checksum verified).
        behavior: a vector bank (``.safetensors``); a pair's score is its best cosine.
        probe_data: JSONL of labelled responses; the probe is built on the store's model and layer.

    Raises:
        ValueError: neither or both sources, or vectors of another dimension than the store's.
        StoreError: a corrupt store, or a bank made with another model or layer.
    """
    if (behavior is None) == (probe_data is None):
        raise ValueError("give exactly one of behavior (a vector bank) and probe_data (labelled responses)")
    store = VectorStore.open(store_path)
    if len(store) == 0:
        raise ValueError(f"{store_path} holds no vector (every pair was skipped when it was encoded): nothing to rank")
    if behavior is not None:
        vectors = bank_vectors(behavior, store, store_path=store_path)
    else:
        vectors = probe_from_file(probe_data, store.manifest).vector
    if vectors.shape[-1] != store.dim:
        raise ValueError(f"behaviour vectors have d={vectors.shape[-1]} but the store has d={store.dim}")
    return rank_pairs(store.pair_ids, store.blocks(), vectors)


__all__ = ["attribute_store", "bank_vectors", "encode_dataset", "probe_from_file", "store_model_settings"]
