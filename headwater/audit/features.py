"""Per-response SAE features of a preference dataset, pooled and stored sparsely.

For every pair, the chosen and the rejected response are run through the pre-DPO model to block
ℓ; each response token is encoded by the SAE; the codes are pooled over the response's tokens
into a mean and a max per latent. Only latents active somewhere in the response are stored (CSR),
so a shard of r pairs holds 2r sparse rows: row 2i the chosen, 2i+1 the rejected response of its
i-th pair. The prompt's mean activation from the same forward pass is kept too (dense, [r, d_in]),
the representation prompt topics are clustered from.

Layout of a feature directory:

- ``part-00000.safetensors`` …: ``indptr`` int64 [2r+1], ``indices`` int32 [nnz], ``mean`` and
  ``max`` float32 [nnz], ``tokens`` int32 [2r] (response lengths), ``positions`` int64 [r]
  (dataset positions), ``prompt`` float32 [r, d_in];
- ``part-00000.json``: a finished part's record (rows, sha256) while the run is under way;
- ``features.json``: the manifest, written last: what was encoded (model, layer, SAE, dataset
  fingerprint, tokenisation), every part with its checksum, the skipped pairs with reasons.

Parts are written atomically as they finish; an interrupted run keeps its finished parts and
computes the rest. Memory is one part's worth, whatever the number of pairs.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from headwater.audit.sae import SparseAutoencoder
from headwater.engine import atomic
from headwater.engine.capture import DEFAULT_MAX_TOKENS_PER_BATCH, pad_token_id_of, response_token_activations
from headwater.engine.store import fingerprint_ids
from headwater.engine.tokenization import TokenizationSettings, encode_pairs, encode_response, settings_as_used

LOG = logging.getLogger(__name__)
MANIFEST = "features.json"
FORMAT = "headwater-response-features"
FORMAT_VERSION = 1


class FeatureStoreError(ValueError):
    """A feature directory that is incomplete, corrupt, or not what the caller expects."""


def _part(index: int) -> str:
    return f"part-{index:05d}.safetensors"


def _record(index: int) -> str:
    return f"part-{index:05d}.json"


@dataclass(frozen=True)
class PooledFeatures:
    """Pooled SAE features of some responses, as a sparse matrix (CSR).

    Attributes:
        indptr: [rows + 1] int64; row i's entries are ``indptr[i]:indptr[i+1]``.
        indices: [nnz] int64 latent indices, ascending within a row.
        mean: [nnz] float32 mean over the response's tokens (inactive tokens count as 0).
        max: [nnz] float32 maximum over the response's tokens.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor

    @property
    def rows(self) -> int:
        return self.indptr.numel() - 1

    def dense(self, d_sae: int, pooling: str = "mean") -> torch.Tensor:
        """[rows, d_sae] float32 of the ``"mean"`` or ``"max"`` pooled values."""
        values = {"mean": self.mean, "max": self.max}[pooling]
        out = torch.zeros((self.rows, d_sae), dtype=torch.float32)
        row = torch.repeat_interleave(torch.arange(self.rows), self.indptr.diff())
        out[row, self.indices.long()] = values
        return out

    def concept_columns(self, concepts: Sequence[Sequence[int]], d_sae: int, pooling: str = "mean") -> torch.Tensor:
        """[rows, len(concepts)] float64: each concept's activation, the sum of its latents' pooled
        values (a concept is a latent or a cluster of them)."""
        dense = self.dense(d_sae, pooling).double()
        if not concepts:
            return torch.zeros((self.rows, 0), dtype=torch.float64)
        return torch.stack([dense[:, list(c)].sum(dim=1) for c in concepts], dim=1)

    def select(self, rows: torch.Tensor) -> PooledFeatures:
        """The given rows, in that order."""
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        within = torch.arange(int(indptr[-1])) - torch.repeat_interleave(indptr[:-1], lengths)
        take = torch.repeat_interleave(starts, lengths) + within
        return PooledFeatures(indptr, self.indices[take], self.mean[take], self.max[take])


def captured_chunks(model: Any, tokenizer: Any, layer: int, prompts: Sequence[Any], responses: Sequence[Any],
                    settings: TokenizationSettings = TokenizationSettings(), *, chunk: int = 256,
                    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH) -> Iterator[tuple[list[int], Any]]:
    """(rows, their block-ℓ response tokens) for ``chunk`` responses at a time (each to its prompt).
    A response that cannot be encoded (empty, over-long under "skip", the wrong format) is left out
    of ``rows``; a chunk with none left is not yielded."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for start in range(0, len(responses), chunk):
        encoded, rows = [], []
        for i in range(start, min(len(responses), start + chunk)):
            try:
                enc = encode_response(tokenizer, prompts[i], responses[i], settings)
            except ValueError:  # empty (or over-long under "skip"): nothing to read
                continue
            if enc.response_length:
                encoded.append(enc)
                rows.append(i)
        if encoded:
            yield rows, response_token_activations(model, encoded, layer, pad_token_id=pad_token_id_of(tokenizer),
                                                   max_tokens_per_batch=max_tokens_per_batch)


def pool_codes(sae: SparseAutoencoder, activations: torch.Tensor, lengths: Sequence[int]) -> PooledFeatures:
    """Encode [n_tokens, d_in] response-token activations and pool each response's codes.

    Returns a CSR of len(lengths) rows; an empty response (length 0) gives an empty row.
    """
    code = sae.encode_sparse(activations)
    lengths_t = torch.tensor(list(lengths), dtype=torch.long)
    token_row = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)  # [n_tokens]
    rows = token_row[code.rows]  # the response of each active entry
    latents = code.indices
    values = code.values.float()
    key = rows * sae.d_sae + latents
    unique, inverse = torch.unique(key, return_inverse=True)  # sorted: by row, then latent
    sums = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, values.double())
    maxima = torch.zeros(unique.numel(), dtype=torch.float32).scatter_reduce_(0, inverse, values, "amax")
    row_of = unique // sae.d_sae
    counts = torch.bincount(row_of, minlength=len(lengths))
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    denominators = lengths_t[row_of].clamp_min(1).double()
    return PooledFeatures(indptr, unique % sae.d_sae, (sums / denominators).float(), maxima)


def sae_fingerprint(sae: SparseAutoencoder) -> str:
    """sha256 over the SAE's architecture and parameters (what features depend on)."""
    import hashlib

    digest = hashlib.sha256(f"{sae.architecture}|{sae.k}|{sae.apply_b_dec_to_input}".encode())
    for name, value in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def encode_features(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    layer: int,
    sae: SparseAutoencoder,
    out_dir: str | os.PathLike[str],
    settings: TokenizationSettings = TokenizationSettings(),
    *,
    identity: dict[str, Any] | None = None,
    part_pairs: int = 256,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
    progress: Callable[[int], None] | None = None,
) -> FeatureStore:
    """Pooled SAE features of every pair's chosen and rejected response, written part by part.

    Args:
        model, tokenizer: the pre-DPO model M0 and its tokenizer.
        pairs: the preference pairs (``pair_id``, ``prompt``, ``chosen``, ``rejected``).
        layer: block ℓ the SAE reads.
        sae: the SAE (inference form is used).
        out_dir: the feature directory; finished parts of the same run are kept.
        identity: extra provenance recorded in the manifest and required to match on resume
            (e.g. the model's fingerprint, the SAE's path).
        part_pairs: pairs per part.
        progress: called with the number of pairs finished after each part.

    Returns:
        The opened, verified :class:`FeatureStore`.
    """
    if part_pairs < 1:
        raise ValueError(f"part_pairs must be positive, got {part_pairs}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise FeatureStoreError(f"{root} is a file, not a feature directory")
    root.mkdir(parents=True, exist_ok=True)
    sae = sae.inference_form().eval()
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "layer": layer, "d_sae": sae.d_sae, "d_in": sae.d_in,
        "sae_fingerprint": sae_fingerprint(sae), "dataset_fingerprint": fingerprint_ids(p.pair_id for p in pairs),
        "n_pairs": len(pairs), "part_pairs": part_pairs,
        "tokenization": settings_as_used(settings, pairs).to_dict(), **(identity or {}),
    }
    existing = root / MANIFEST
    if existing.exists():
        found = json.loads(existing.read_text())
        if {k: found.get(k) for k in header} == json.loads(json.dumps(atomic.json_safe(header))):
            return FeatureStore.open(root)
        raise FeatureStoreError(f"{root} holds features of another run ({_differences(found, header)}); "
                                "choose another directory or remove it")
    pad = pad_token_id_of(tokenizer)
    n_parts = max(1, -(-len(pairs) // part_pairs))
    records: list[dict[str, Any]] = []
    for index in range(n_parts):
        start, stop = index * part_pairs, min(len(pairs), (index + 1) * part_pairs)
        record = _finished_part(root, index, header)
        if record is None:
            record = _encode_part(model, tokenizer, pairs[start:stop], start, layer, sae, settings, pad,
                                  max_tokens_per_batch, root, index, header)
        records.append(record)
        if progress is not None:
            progress(stop - start)
    manifest = {**header, "parts": [{k: r[k] for k in ("file", "start", "stop", "rows", "sha256")} for r in records],
                "pair_ids": [pid for r in records for pid in r["pair_ids"]],
                "skipped_pairs": [s for r in records for s in r["skipped"]],
                "n_tokens": sum(r["n_tokens"] for r in records)}
    atomic.write_json(root / MANIFEST, manifest)
    for index in range(n_parts):
        (root / _record(index)).unlink(missing_ok=True)
    return FeatureStore.open(root)


def _differences(found: dict[str, Any], header: dict[str, Any]) -> str:
    keys = [k for k in header if found.get(k) != json.loads(json.dumps(atomic.json_safe(header[k])))]
    return ", ".join(f"{k}: {found.get(k)!r} there, {header[k]!r} here" for k in keys[:3])


def _finished_part(root: Path, index: int, header: dict[str, Any]) -> dict[str, Any] | None:
    try:
        record = json.loads((root / _record(index)).read_text())
    except (OSError, ValueError):
        return None
    if record.get("header") != json.loads(json.dumps(atomic.json_safe(header))):
        return None
    path = root / record["file"]
    if not path.is_file() or atomic.sha256_file(path) != record["sha256"]:
        LOG.warning("part %d of %s does not match its record: encoding it again", index, root)
        return None
    return record


def _encode_part(model: Any, tokenizer: Any, pairs: Sequence[Any], start: int, layer: int, sae: SparseAutoencoder,
                 settings: TokenizationSettings, pad: int, max_tokens_per_batch: int, root: Path, index: int,
                 header: dict[str, Any]) -> dict[str, Any]:
    encoded = encode_pairs(tokenizer, pairs, settings)
    skipped = [{"position": start + p, "pair_id": pairs[p].pair_id, "reason": reason} for p, reason in encoded.skipped]
    tensors: dict[str, torch.Tensor]
    if encoded.encoded:
        sequences = [side for pair in encoded.encoded for side in pair]  # c0, r0, c1, r1, ...
        captured = response_token_activations(model, sequences, layer, pad_token_id=pad,
                                              max_tokens_per_batch=max_tokens_per_batch)
        pooled = pool_codes(sae, captured.activations, captured.lengths)
        tensors = {"indptr": pooled.indptr, "indices": pooled.indices.to(torch.int32), "mean": pooled.mean,
                   "max": pooled.max, "tokens": torch.tensor(captured.lengths, dtype=torch.int32),
                   "positions": torch.tensor([start + k for k in encoded.kept], dtype=torch.long),
                   "prompt": captured.prompt_means[0::2].contiguous()}
        n_tokens = sum(captured.lengths)
    else:
        tensors = {"indptr": torch.zeros(1, dtype=torch.long), "indices": torch.zeros(0, dtype=torch.int32),
                   "mean": torch.zeros(0), "max": torch.zeros(0), "tokens": torch.zeros(0, dtype=torch.int32),
                   "positions": torch.zeros(0, dtype=torch.long), "prompt": torch.zeros((0, sae.d_in))}
        n_tokens = 0
    with atomic.atomic_path(root / _part(index)) as tmp:
        save_file(tensors, str(tmp))
    record = {"file": _part(index), "start": start, "stop": start + len(pairs), "rows": len(encoded.kept),
              "sha256": atomic.sha256_file(root / _part(index)), "skipped": skipped, "n_tokens": n_tokens,
              "pair_ids": [pairs[k].pair_id for k in encoded.kept], "header": header}
    atomic.write_json(root / _record(index), record)
    return record


@dataclass(frozen=True)
class FeatureBlock:
    """One part of a feature directory: ``rows`` pairs, chosen and rejected features, prompts.

    Attributes:
        positions: [rows] int64 dataset positions of the pairs.
        chosen, rejected: pooled features of their chosen and rejected responses.
        prompt: [rows, d_in] float32 prompt means.
        tokens: [rows, 2] int32 response lengths (chosen, rejected).
    """

    positions: torch.Tensor
    chosen: PooledFeatures
    rejected: PooledFeatures
    prompt: torch.Tensor
    tokens: torch.Tensor


class FeatureStore:
    """A finished feature directory, verified against its manifest when opened."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> FeatureStore:
        root = Path(path)
        if not (root / MANIFEST).exists():
            raise FeatureStoreError(f"{root} is not a finished feature directory ({MANIFEST} is missing)")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except ValueError as err:
            raise FeatureStoreError(f"{root / MANIFEST} is not valid JSON: {err}") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(f"{root} is not a headwater feature directory of version {FORMAT_VERSION}")
        if len(manifest["pair_ids"]) != sum(p["rows"] for p in manifest["parts"]):
            raise FeatureStoreError(f"{root / MANIFEST}: pair ids and part rows disagree")
        store = cls(root, manifest)
        if verify:
            for part in manifest["parts"]:
                path = root / part["file"]
                if not path.is_file() or atomic.sha256_file(path) != part["sha256"]:
                    raise FeatureStoreError(f"{path} is missing or does not match its checksum in {MANIFEST}")
        return store

    def __len__(self) -> int:
        return len(self.manifest["pair_ids"])

    @property
    def d_sae(self) -> int:
        return int(self.manifest["d_sae"])

    @property
    def pair_ids(self) -> list[str]:
        return list(self.manifest["pair_ids"])

    def concept_sides(self, concepts: Sequence[Sequence[int]], pooling: str = "mean"
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(pair ids, chosen [n, C], rejected [n, C]) float64 concept activations of every pair."""
        chosen, rejected = [], []
        for block in self.blocks():
            chosen.append(block.chosen.concept_columns(concepts, self.d_sae, pooling).numpy())
            rejected.append(block.rejected.concept_columns(concepts, self.d_sae, pooling).numpy())
        empty = np.zeros((0, len(concepts)))
        return self.pair_ids, np.concatenate(chosen) if chosen else empty, np.concatenate(rejected) if rejected else empty

    def prompt_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """[len(rows), d_in] float32: the prompt means of the given store rows, in that order (read
        part by part; only the requested rows are kept)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        out = np.zeros((rows.size, int(self.manifest["d_in"])), dtype=np.float32)
        start = 0
        for block in self.blocks():
            stop = start + block.prompt.shape[0]
            inside = np.nonzero((rows >= start) & (rows < stop))[0]
            if inside.size:
                out[inside] = block.prompt[torch.from_numpy(rows[inside] - start)].numpy()
            start = stop
        return out

    def blocks(self) -> Iterator[FeatureBlock]:
        """The parts in dataset order, one in memory at a time."""
        for part in self.manifest["parts"]:
            path = self.root / part["file"]
            try:
                t = load_file(str(path))
            except (SafetensorError, OSError) as err:
                raise FeatureStoreError(f"{path} cannot be read: {err}") from None
            whole = PooledFeatures(t["indptr"], t["indices"].long(), t["mean"], t["max"])
            rows = int(t["positions"].numel())
            if whole.rows != 2 * rows or t["prompt"].shape[0] != rows:
                raise FeatureStoreError(f"{path}: {whole.rows} response rows for {rows} pairs")
            yield FeatureBlock(t["positions"], whole.select(torch.arange(0, 2 * rows, 2)),
                               whole.select(torch.arange(1, 2 * rows, 2)), t["prompt"],
                               t["tokens"].view(rows, 2) if rows else t["tokens"].view(0, 2))


__all__ = ["FeatureBlock", "captured_chunks", "FeatureStore", "FeatureStoreError", "PooledFeatures", "encode_features", "pool_codes",
           "sae_fingerprint"]
