"""A directory of datapoint vectors with a manifest that says exactly how they were made.

Layout::

    out_dir/
      manifest.json          model, layer, dtype, tokenisation settings, dataset fingerprint,
                             pair ids file, shard list with sha256 checksums, skipped pairs
      pair_ids.txt           one id per line, aligned with the rows of the shards
      shard-00000.safetensors  {"vectors": [n, d]}

Reads check every checksum, so a corrupt shard is detected, never silently used, and
:func:`check_compatible` refuses a store made with another model, layer or dataset.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class StoreError(ValueError):
    """A vector store is missing, corrupt, or does not match what it is used with."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StoredVectors:
    """Vectors read back from a store: ``vectors[i]`` belongs to ``pair_ids[i]``."""

    pair_ids: list[str]
    vectors: torch.Tensor  # [N, d]
    manifest: dict[str, Any] = field(default_factory=dict)


def write_store(
    out_dir: str | Path,
    pair_ids: list[str],
    vectors: torch.Tensor,
    manifest: dict[str, Any],
    *,
    shard_rows: int = 65536,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write vectors [N, d] in shards of ``shard_rows`` plus the manifest (written last, so a
    directory without a manifest is an unfinished write)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vectors.dim() != 2 or vectors.shape[0] != len(pair_ids):
        raise StoreError(f"vectors must be [N, d] with N = {len(pair_ids)} pair ids, got {tuple(vectors.shape)}")
    (out / MANIFEST).unlink(missing_ok=True)
    shards = []
    for index, start in enumerate(range(0, max(len(pair_ids), 1), shard_rows)):
        name = f"shard-{index:05d}.safetensors"
        block = vectors[start : start + shard_rows].to(dtype).contiguous()
        save_file({"vectors": block}, str(out / name))
        shards.append({"file": name, "rows": int(block.shape[0]), "sha256": sha256_file(out / name)})
    (out / "pair_ids.txt").write_text("".join(f"{pid}\n" for pid in pair_ids))
    full = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "n_vectors": len(pair_ids),
        "dim": int(vectors.shape[1]),
        "dtype": str(dtype).removeprefix("torch."),
        "pair_ids_sha256": sha256_file(out / "pair_ids.txt"),
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
    return out


def read_manifest(store_dir: str | Path) -> dict[str, Any]:
    path = Path(store_dir) / MANIFEST
    if not path.exists():
        raise StoreError(f"{store_dir} is not a complete vector store: {MANIFEST} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path} is not valid JSON: {err}") from None


def read_store(store_dir: str | Path) -> StoredVectors:
    """Load every shard after checking its checksum; raises :class:`StoreError` on any mismatch."""
    root = Path(store_dir)
    manifest = read_manifest(root)
    ids_path = root / "pair_ids.txt"
    if not ids_path.exists() or sha256_file(ids_path) != manifest["pair_ids_sha256"]:
        raise StoreError(f"{ids_path} is missing or does not match the manifest's checksum")
    pair_ids = ids_path.read_text().splitlines()
    blocks = []
    for shard in manifest["shards"]:
        path = root / shard["file"]
        if not path.exists():
            raise StoreError(f"shard {path} listed in the manifest is missing")
        if sha256_file(path) != shard["sha256"]:
            raise StoreError(f"shard {path} is corrupt: its sha256 does not match the manifest")
        block = load_file(str(path))["vectors"]
        if block.shape[0] != shard["rows"]:
            raise StoreError(f"shard {path} has {block.shape[0]} rows, the manifest says {shard['rows']}")
        blocks.append(block)
    vectors = torch.cat(blocks) if blocks else torch.empty(0, manifest["dim"])
    if vectors.shape[0] != len(pair_ids):
        raise StoreError(f"{root}: {vectors.shape[0]} vectors but {len(pair_ids)} pair ids")
    return StoredVectors(pair_ids, vectors, manifest)


def check_compatible(manifest: dict[str, Any], **expected: Any) -> None:
    """Refuse a store whose manifest disagrees with ``expected`` (e.g. model, layer, dataset
    fingerprint), listing every difference with both values."""
    diffs = [
        f"{key}: store has {manifest.get(key)!r}, expected {value!r}"
        for key, value in expected.items()
        if value is not None and manifest.get(key) != value
    ]
    if diffs:
        raise StoreError("the vector store does not match: " + "; ".join(diffs))


def model_fingerprint(model: Any) -> str:
    """A cheap id of a model's architecture and weights: sha256 of its config and of a few
    parameter tensors spread through the network (enough to tell M0 from M1 without hashing
    gigabytes)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    params = list(model.named_parameters())
    for name, param in params[:: max(1, len(params) // 8)]:
        digest.update(name.encode())
        digest.update(param.detach().flatten()[:4096].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
