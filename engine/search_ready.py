"""A vector store's search-ready copy: screening inputs kept on disk beside the shards.

An exact search with bfloat16 screening (:mod:`headwater.kernels.topk`) needs, per key, its
inverse norm, its unit row rounded to bfloat16 and the length of that rounding error. Made on
every search they cost one pass over the keys; here they are written once per shard, verified
like the shards, and memory-mapped by every later search (:class:`headwater.kernels.PreparedKeys`).

Layout, inside the store directory::

    search/manifest.json            {"version", "dim", "shards": [per shard: index, rows,
                                      source_sha256 (the shard it was made from), files]}
    search/unit-00000.npy           [rows, d] int16: the bfloat16 bits of the unit rows
    search/norms-00000.npy          [2, rows] float32: inverse norms, rounding-error lengths
    search/rows-00000.npy           [rows, d] float32, only for a shard that is not float32 or
                                    that holds rows of extreme scale (rescaled by powers of two)

Every file is written atomically and its sha256 recorded; the manifest is written last, so an
interrupted build leaves no manifest (or the previous one) and is redone. A copy whose
``source_sha256`` differs from the store's shard (the store was rewritten) is stale and rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from headwater.engine import atomic
from headwater.engine.store_format import StoreError, sha256_file
from headwater.kernels.prepared import PreparedBlock, PreparedKeys, prepare_rows

LOG = logging.getLogger("headwater.engine")

SEARCH_DIR = "search"
SEARCH_MANIFEST = "manifest.json"
SEARCH_VERSION = 1


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_array(directory: Path, name: str, array: np.ndarray) -> dict[str, str]:
    data = _npy_bytes(array)
    atomic.write_bytes(directory / name, data)
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest()}


def _expected_shards(store: Any) -> list[dict[str, Any]]:
    return [
        {"index": number, "rows": int(shard["rows"]), "source_sha256": shard["sha256"]}
        for number, shard in enumerate(store.shards)
    ]


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / SEARCH_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_current(manifest: dict[str, Any] | None, store: Any) -> bool:
    """Whether a search manifest was made from exactly these shards, in this layout."""
    if manifest is None or manifest.get("version") != SEARCH_VERSION or manifest.get("dim") != store.dim:
        return False
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != len(store.shards):
        return False
    return all(
        isinstance(mine, dict) and all(mine.get(key) == value for key, value in want.items())
        for mine, want in zip(shards, _expected_shards(store))
    )


def write_search_copy(store: Any) -> dict[str, Any]:
    """Write (or rewrite) the store's search-ready copy and return its manifest.

    One pass over the store, shard by shard (memory: one shard's copy at a time).

    Raises:
        StoreError: the C++ extension is not built, or a key row holds inf/NaN.

    ``store`` is a :class:`headwater.engine.store.VectorStore` (not imported: the store imports
    this module for its ``search_keys`` method).
    """
    directory = store.root / SEARCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    offset = 0
    for entry in _expected_shards(store):
        number, rows = entry["index"], entry["rows"]
        record = dict(entry, files={})
        if rows:
            source = store.shard(number)
            try:
                prepared = prepare_rows(source, offset)
            except (RuntimeError, ValueError) as error:
                raise StoreError(f"{store.root}: shard {number}: {error}") from None
            files = record["files"]
            files["unit"] = _write_array(directory, f"unit-{number:05d}.npy", prepared.unit_bf16.view(torch.int16).numpy())
            files["norms"] = _write_array(directory, f"norms-{number:05d}.npy", np.stack([prepared.inv_norms, prepared.errors]))
            if prepared.rows is not source:
                # a float16/bfloat16 store, or rows of extreme scale that were rescaled: the exact
                # scores must come from the float32 rows the copy was made from
                files["rows"] = _write_array(directory, f"rows-{number:05d}.npy", prepared.rows.numpy())
        shards.append(record)
        offset += rows
    manifest = {"version": SEARCH_VERSION, "dim": store.dim, "shards": shards}
    atomic.write_json(directory / SEARCH_MANIFEST, manifest, indent=1)
    LOG.info("wrote the search-ready copy of %s (%d shards)", store.root, len(shards))
    return manifest


def verify_search_copy(store: Any, manifest: dict[str, Any]) -> None:
    """Check every file of the copy against its recorded sha256; raise StoreError naming a bad one."""
    directory = store.root / SEARCH_DIR
    for record in manifest["shards"]:
        for entry in record["files"].values():
            path = directory / entry["file"]
            if path.is_symlink() or not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise StoreError(f"{path} is missing or corrupt (its sha256 does not match {directory / SEARCH_MANIFEST})")


def _load(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise StoreError(f"{path} cannot be read: {error}") from None
    if array.dtype != dtype or array.shape != shape:
        raise StoreError(f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    return array


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only maps: the search only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def search_keys(store: Any, *, write: bool = True, verify: bool = True) -> PreparedKeys:
    """The store's keys with their search-ready copy, for :func:`headwater.kernels.cosine_topk`.

    Args:
        write: make the copy when it is missing or stale (one pass over the store); otherwise
            raise StoreError then.
        verify: check the copy's sha256 checksums (once per store object).

    Raises:
        StoreError: no current copy and ``write`` is False; a corrupt file; the copy cannot be made.
    """
    directory = store.root / SEARCH_DIR
    manifest = _read_manifest(directory)
    if not _is_current(manifest, store):
        if not write:
            raise StoreError(f"{store.root} has no current search-ready copy; make one with search_keys(write=True)")
        manifest = write_search_copy(store)
        store._search_verified = True  # just written from verified shards
    elif verify and not getattr(store, "_search_verified", False):
        verify_search_copy(store, manifest)
        store._search_verified = True
    records = manifest["shards"]
    d = store.dim

    def blocks() -> Iterator[PreparedBlock]:
        offset = 0
        for record in records:
            rows = int(record["rows"])
            if rows:
                number, files = record["index"], record["files"]
                unit = _tensor(_load(directory / files["unit"]["file"], np.dtype(np.int16), (rows, d)))
                norms = _load(directory / files["norms"]["file"], np.dtype(np.float32), (2, rows))
                if "rows" in files:
                    keys = _tensor(_load(directory / files["rows"]["file"], np.dtype(np.float32), (rows, d)))
                else:
                    keys = store.shard(number)
                yield PreparedBlock(keys, offset, norms[0], unit.view(torch.bfloat16), norms[1])
            offset += rows

    return PreparedKeys(blocks, len(store), d)
