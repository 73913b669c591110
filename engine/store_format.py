"""The vector store's on-disk format and what guards it: file names, identity keys, the
manifest's schema, and the one-writer lock. :mod:`headwater.engine.store` reads and writes stores
on top of it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from headwater.engine import atomic

MANIFEST = "manifest.json"
RUN_FILE = "run.json"
PAIR_IDS = "pair_ids.txt"
FORMAT_VERSION = 2

# Store dtype name -> (numpy dtype on disk, torch dtype in memory). numpy has no bfloat16: its
# bits are kept as uint16 and viewed as torch.bfloat16 on read (no copy, no rounding).
STORE_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float32": (np.dtype(np.float32), torch.float32),
    "float16": (np.dtype(np.float16), torch.float16),
    "bfloat16": (np.dtype(np.uint16), torch.bfloat16),
}

# What must agree for a partial run to be continued, or for a store to be used with a model.
# The batching settings are among them: batches are padded, and a different batch composition
# changes float rounding, so a resumed run with other settings would not be bit-identical.
IDENTITY_KEYS = (
    "model_fingerprint",
    "layer",
    "model_dtype",
    "tokenization",
    "dataset_fingerprint",
    "n_pairs_in_dataset",
    "dtype",
    "shard_pairs",
    "prompt_sharing",
    "max_tokens_per_batch",
    "pad_multiple",
)
LOCK_FILE = ".lock"
SHARD_NAME = re.compile(r"^shard-(\d{5})\.(npy|safetensors)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(ValueError):
    """A vector store is missing, corrupt, or does not match what it is used with."""


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file (a FIFO or a device is refused: reading it could block forever)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise StoreError(f"{path} is not a regular file")
    return atomic.sha256_file(path)


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.float16`` or ``"float16"`` -> ``"float16"``, checked against :data:`STORE_DTYPES`."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in STORE_DTYPES:
        raise StoreError(f"store dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    return name


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.npy"


def shard_record_file(index: int) -> str:
    return f"shard-{index:05d}.json"


def _fail(where: Path, problem: str) -> None:
    raise StoreError(f"{where}: {problem}; it is not a valid headwater vector store manifest")


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Check a manifest's schema before anything in it is trusted.

    Every shard is named ``shard-NNNNN.npy`` (or ``.safetensors``, format 1) with NNNNN its
    position, so every path stays inside the store and no shard is listed twice; shards cover the
    dataset positions ``[0, n_pairs_in_dataset)`` without gap or overlap; counts add up.

    Raises:
        StoreError: naming the first key or shard that is missing, of the wrong type or out of place.
    """
    where = root / MANIFEST
    for key, check, what in (
        ("dim", lambda v: _is_int(v, 1), "a positive integer"),
        ("n_vectors", _is_int, "a non-negative integer"),
        ("dtype", lambda v: v in STORE_DTYPES, f"one of {sorted(STORE_DTYPES)}"),
        ("pair_ids_sha256", lambda v: isinstance(v, str) and SHA256.match(v) is not None, "a sha256 hex digest"),
        ("shards", lambda v: isinstance(v, list), "a list"),
    ):
        if key not in manifest:
            _fail(where, f"{key!r} is missing")
        if not check(manifest[key]):
            _fail(where, f"{key!r} must be {what}, got {manifest[key]!r:.80}")
    position, rows = 0, 0
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            _fail(where, f"shard {i} must be an object, got {shard!r:.80}")
        for key, check in (("file", lambda v: isinstance(v, str)), ("rows", _is_int),
                           ("sha256", lambda v: isinstance(v, str) and SHA256.match(v) is not None)):
            if key not in shard or not check(shard[key]):
                _fail(where, f"shard {i} has no valid {key!r} (got {shard.get(key)!r:.80})")
        match = SHARD_NAME.match(shard["file"])
        if match is None or int(match.group(1)) != i:
            _fail(where, f"shard {i} is named {shard['file']!r:.80}; expected {shard_file(i)!r} (a file of this store, "
                         "listed once, in order)")
        if "start" in shard or "stop" in shard:
            start, stop = shard.get("start"), shard.get("stop")
            if not (_is_int(start) and _is_int(stop)) or start != position or stop < start:
                _fail(where, f"shard {i} covers positions {start!r}..{stop!r}; expected to start at {position} "
                             "(shards must cover the dataset without gaps or overlaps)")
            if shard["rows"] > stop - start:
                _fail(where, f"shard {i} has {shard['rows']} rows for {stop - start} positions")
            position = stop
        rows += shard["rows"]
    if rows != manifest["n_vectors"]:
        _fail(where, f"the shards hold {rows} rows but n_vectors is {manifest['n_vectors']}")
    expected = manifest.get("n_pairs_in_dataset")
    if manifest["shards"] and "stop" in manifest["shards"][-1] and _is_int(expected) and position != expected:
        _fail(where, f"the shards cover {position} dataset positions but n_pairs_in_dataset is {expected}")


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold ``root``'s write lock for the block (``flock`` on ``root/.lock``; released by the OS
    if the process dies). A second writer gets a :class:`StoreError` at once instead of racing."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a directory for a vector store")
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise StoreError(
                f"{root} is being written by another process{f' (pid {holder})' if holder else ''}; wait for it to "
                "finish, or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: nothing names a holder (the file itself stays)
    finally:
        os.close(fd)


__all__ = [
    "FORMAT_VERSION", "IDENTITY_KEYS", "LOCK_FILE", "MANIFEST", "PAIR_IDS", "RUN_FILE", "SHA256", "SHARD_NAME",
    "STORE_DTYPES", "StoreError", "dtype_name", "sha256_file", "shard_file", "shard_record_file", "store_lock",
    "validate_manifest",
]
