"""A directory of datapoint vectors with a manifest that says exactly how they were made.

Layout::

    out_dir/
      manifest.json        written last: model, layer, dtypes, tokenisation settings, dataset
                           fingerprint, shard list with sha256 checksums, skipped pairs with reasons
      pair_ids.txt         one id per line, aligned with the rows of the shards in order
      shard-00000.npy      vectors [n, d]; float32 / float16, or bfloat16 stored as its uint16 bits
      shard-00001.npy      ...

While a run is going (and after it was killed) the directory also holds ``run.json`` (what the
run is computing: model fingerprint, layer, dataset fingerprint, ...) and one
``shard-XXXXX.json`` record per *complete* shard (its dataset positions, pair ids, skipped pairs
and checksum). A shard's ``.npy`` is written to a temporary name, flushed to disk and renamed, and
its record is written the same way afterwards, so a shard either has a record that matches its
bytes or is recomputed: a process killed at any instant leaves nothing half-used. Finishing a run
writes ``pair_ids.txt`` and ``manifest.json`` and removes the records.

Reads memory-map the shards (``np.load(mmap_mode="r")``), so a store larger than memory streams
through :func:`headwater.kernels.cosine_topk` block by block. Opening a store checks every checksum
(``verify=True``): a corrupt or truncated shard is detected, never silently used.
:func:`check_compatible` refuses a store made with another model, layer or dataset.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from headwater.engine import atomic
from headwater.engine.store_format import (  # noqa: F401  (re-exported: the store's public names)
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LOCK_FILE,
    MANIFEST,
    PAIR_IDS,
    RUN_FILE,
    STORE_DTYPES,
    StoreError,
    dtype_name,
    sha256_file,
    shard_file,
    shard_record_file,
    store_lock,
    validate_manifest,
)

LOG = logging.getLogger(__name__)


def _write_json_atomic(path: Path, value: Any) -> None:
    atomic.write_json(path, value, indent=2, sort_keys=True)


def _to_numpy(vectors: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """[n, d] vectors as a C-contiguous numpy array in the on-disk form of ``dtype``."""
    torch_dtype = STORE_DTYPES[dtype][1]
    t = torch.as_tensor(vectors).detach().to("cpu", torch_dtype).contiguous()
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# Shards and their records


@dataclass
class ShardRecord:
    """One complete shard: which dataset positions it covers and what it holds.

    Attributes:
        index: shard number; the file is ``shard-{index:05d}.npy``.
        start, stop: the dataset positions [start, stop) the shard covers.
        rows: vectors in the shard (the pairs of [start, stop) that were not skipped).
        sha256: checksum of the ``.npy`` file.
        pair_ids: ids of the ``rows`` pairs, in row order.
        skipped: ``{"position", "pair_id", "reason"}`` for each pair of [start, stop) left out.
        n_truncated: kept pairs with at least one side truncated to ``max_length``.
        n_tokens: tokens of prompt + response over both sides of the kept pairs.
    """

    index: int
    start: int
    stop: int
    rows: int
    sha256: str
    pair_ids: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    n_truncated: int = 0
    n_tokens: int = 0

    @property
    def file(self) -> str:
        return shard_file(self.index)


def write_shard(root: Path, record: ShardRecord, vectors: torch.Tensor | np.ndarray, dtype: str) -> ShardRecord:
    """Write one shard's vectors [rows, d] and then its record, each atomically.

    The returned record carries the checksum of the bytes written. Until the record exists the
    shard does not count, so a process killed between the two writes recomputes the shard.
    """
    array = _to_numpy(vectors, dtype)
    if array.ndim != 2 or array.shape[0] != len(record.pair_ids):
        raise StoreError(
            f"shard {record.index}: vectors must be [rows, d] with rows = {len(record.pair_ids)} pair ids, "
            f"got {tuple(array.shape)}"
        )
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    record.rows = int(array.shape[0])
    record.sha256 = hashlib.sha256(data).hexdigest()
    atomic.write_bytes(root / record.file, data)
    _write_json_atomic(root / shard_record_file(record.index), asdict(record))
    return record


def read_shard_record(root: Path, index: int) -> ShardRecord | None:
    """The record of shard ``index`` if it exists and parses, else None (shard not complete)."""
    path = root / shard_record_file(index)
    try:
        return ShardRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def shard_is_intact(root: Path, record: ShardRecord) -> bool:
    """Whether the shard's file exists and its sha256 equals the record's."""
    path = root / record.file
    return path.is_file() and sha256_file(path) == record.sha256


def open_shard(path: Path, rows: int, dim: int, dtype: str) -> torch.Tensor:
    """Memory-map one ``.npy`` shard as a read-only [rows, dim] tensor in the store dtype.

    Raises:
        StoreError: the file is missing, unreadable, or its shape or dtype is not the manifest's.
    """
    if path.suffix == ".safetensors":  # format 1 (headwater before the streaming engine)
        from safetensors.torch import load_file

        block = load_file(str(path))["vectors"]
    else:
        if path.is_symlink() or not path.is_file():
            raise StoreError(f"shard {path} is missing or not a regular file of the store")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise StoreError(f"shard {path} cannot be read: {err}") from None
        on_disk = STORE_DTYPES[dtype][0]
        if array.dtype != on_disk:
            raise StoreError(f"shard {path} holds {array.dtype}, the manifest says {dtype} ({on_disk} on disk)")
        with warnings.catch_warnings():
            # the map is read-only; torch warns that writing through it would be undefined
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            block = torch.from_numpy(array)
        if dtype == "bfloat16":
            block = block.view(torch.bfloat16)
    if tuple(block.shape) != (rows, dim) and not (rows == 0 and block.shape[0] == 0):
        raise StoreError(f"shard {path} has shape {tuple(block.shape)}, the manifest says ({rows}, {dim})")
    return block


# ---------------------------------------------------------------------------------------------
# Runs: start, continue, finish


def start_run(root: Path, header: dict[str, Any], *, resume: bool, overwrite: bool = False) -> dict[str, Any] | None:
    """Prepare ``root`` for a run described by ``header`` (the :data:`IDENTITY_KEYS` and more).

    Returns the manifest when ``root`` already holds the finished store of this same run (and
    ``resume`` is set), else None.

    Raises:
        StoreError: ``root`` holds a store or a partial run and neither ``resume`` nor
            ``overwrite`` is set; or ``resume`` is set and what is there was made with another
            model, layer, dataset, tokenisation, dtype or shard size (every difference is named).
    """
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a directory for a vector store")
    root.mkdir(parents=True, exist_ok=True)
    existing = None
    for name in (MANIFEST, RUN_FILE):
        if (root / name).exists():
            existing = name
            break
    if existing is not None and overwrite:
        clear_store(root)
        existing = None
    if existing is not None and not resume:
        raise StoreError(
            f"{root} already holds a vector store{' run' if existing == RUN_FILE else ''} ({existing}); "
            "continue it with --resume (resume=True), replace it with --overwrite (overwrite=True), "
            "or choose another directory"
        )
    if existing is not None:
        found = _read_json(root / existing)
        check_compatible(found, what=f"{root / existing}", **{k: header.get(k) for k in IDENTITY_KEYS})
        if existing == MANIFEST:
            return found
    else:
        _write_json_atomic(root / RUN_FILE, header)
    return None


def resumable_shards(root: Path, indices: Sequence[int], n: int, shard_pairs: int) -> tuple[list[int], list[ShardRecord]]:
    """Split shard ``indices`` of a run over ``n`` pairs into (to compute, complete ones to keep).

    A shard is kept when its record exists, covers the expected positions and its file's sha256
    matches; anything else (missing, torn write, corrupt) is computed again, with a warning.
    """
    pending, kept = [], []
    for index in indices:
        record = read_shard_record(root, index)
        expected = (index * shard_pairs, min(n, (index + 1) * shard_pairs))
        if record is not None and (record.start, record.stop) == expected and shard_is_intact(root, record):
            kept.append(record)
            continue
        if record is not None:
            LOG.warning("shard %d of %s does not match its record (corrupt or torn write): recomputing it", index, root)
        pending.append(index)
    return pending, kept


def clear_store(root: Path) -> None:
    """Remove the files a store or a run consists of (and nothing else) from ``root``."""
    for pattern in (MANIFEST, RUN_FILE, PAIR_IDS, "shard-*.npy", "shard-*.json", "shard-*.safetensors", ".*.tmp"):
        for path in root.glob(pattern):
            path.unlink()


def finish_run(root: Path, header: dict[str, Any], records: Sequence[ShardRecord], extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``pair_ids.txt`` and ``manifest.json`` from the shard records, then drop the records.

    ``records`` must cover every shard of the run, in order; the manifest is the last file written,
    so a directory with a manifest is a complete store.
    """
    records = sorted(records, key=lambda r: r.index)
    expected = list(range(len(records)))
    if [r.index for r in records] != expected:
        raise StoreError(f"{root}: shard records {[r.index for r in records]} are not the complete list {expected}")
    with atomic.atomic_path(root / PAIR_IDS) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.writelines(f"{pid}\n" for pid in record.pair_ids)
    skipped = [s for r in records for s in r.skipped]
    manifest = {
        **header,
        **extra,
        "format_version": FORMAT_VERSION,
        "n_vectors": sum(r.rows for r in records),
        "n_truncated": sum(r.n_truncated for r in records),
        "n_tokens": sum(r.n_tokens for r in records),
        "pair_ids_sha256": sha256_file(root / PAIR_IDS),
        "shards": [
            {"file": r.file, "start": r.start, "stop": r.stop, "rows": r.rows, "sha256": r.sha256} for r in records
        ],
        "skipped_pairs": skipped,
    }
    _write_json_atomic(root / MANIFEST, manifest)
    (root / RUN_FILE).unlink(missing_ok=True)
    for record in records:
        (root / shard_record_file(record.index)).unlink(missing_ok=True)
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise StoreError(f"{path} does not hold a JSON object")
    return value


def read_manifest(store_dir: str | Path) -> dict[str, Any]:
    path = Path(store_dir) / MANIFEST
    if not path.exists():
        hint = " (a partial run is there: continue it with --resume)" if (Path(store_dir) / RUN_FILE).exists() else ""
        raise StoreError(f"{store_dir} is not a complete vector store: {MANIFEST} is missing{hint}")
    manifest = _read_json(path)
    validate_manifest(Path(store_dir), manifest)
    return manifest


class VectorStore:
    """A finished vector store, its shards memory-mapped.

    Open one with :meth:`open`. ``len(store)`` vectors of ``store.dim`` dimensions in
    ``store.dtype``; row i belongs to ``store.pair_ids[i]``.

    Example::

        store = VectorStore.open("vectors/")           # checks every shard's sha256
        for block, offset in store.blocks():           # [n_b, d] memory-mapped, global row offset
            ...
        D, I = cosine_topk(queries, store.blocks(), k=10)
        D, I = cosine_topk(queries, store.search_keys(), k=10)   # repeated searches: no conversion
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.summary: dict[str, Any] = {}  # set by the run that produced the store
        self._pair_ids: list[str] | None = None
        self._search_verified = False  # the search-ready copy's checksums were checked
        validate_manifest(root, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> VectorStore:
        """Open the store at ``path``.

        Args:
            verify: check every shard's and the id file's sha256 now (reads every byte once);
                without it, shapes and dtypes are still checked when a shard is mapped.

        Raises:
            StoreError: no manifest, a missing or corrupt shard (named), ids that do not match.
        """
        root = Path(path)
        store = cls(root, read_manifest(root))
        if verify:
            store.verify()
        return store

    def __len__(self) -> int:
        return int(self.manifest["n_vectors"])

    def __repr__(self) -> str:
        return f"VectorStore({str(self.root)!r}, n={len(self)}, d={self.dim}, dtype={self.dtype_name})"

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype_name(self) -> str:
        return str(self.manifest.get("dtype", "float32"))

    @property
    def dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.dtype_name][1]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest["shards"])

    @property
    def pair_ids(self) -> list[str]:
        """Ids aligned with the rows, read from ``pair_ids.txt`` after checking its checksum."""
        if self._pair_ids is None:
            path = self.root / PAIR_IDS
            if not path.is_file() or path.is_symlink() or sha256_file(path) != self.manifest.get("pair_ids_sha256"):
                raise StoreError(f"{path} is missing or does not match the manifest's checksum")
            ids = path.read_text().splitlines()
            if len(ids) != len(self):
                raise StoreError(f"{self.root}: {len(self)} vectors but {len(ids)} pair ids")
            self._pair_ids = ids
        return self._pair_ids

    def verify(self) -> None:
        """Check the sha256 of every shard and of the id file; raise StoreError naming the first bad one."""
        rows = 0
        for shard in self.shards:
            path = self.root / shard["file"]
            if not path.exists():
                raise StoreError(f"shard {path} listed in the manifest is missing")
            if path.is_symlink() or not path.is_file():
                raise StoreError(f"shard {path} is not a regular file of the store")
            if sha256_file(path) != shard["sha256"]:
                raise StoreError(f"shard {path} is corrupt: its sha256 does not match the manifest")
            rows += int(shard["rows"])
        if rows != len(self):
            raise StoreError(f"{self.root}: shards hold {rows} rows, the manifest says {len(self)}")
        _ = self.pair_ids

    def shard(self, number: int) -> torch.Tensor:
        """Shard ``number`` as a memory-mapped [rows, d] tensor in the store dtype."""
        shard = self.shards[number]
        return open_shard(self.root / shard["file"], int(shard["rows"]), self.dim, self.dtype_name)

    def blocks(self) -> Iterator[tuple[torch.Tensor, int]]:
        """``(block [n_b, d], global row offset)`` per non-empty shard, memory-mapped: the key
        source :func:`headwater.kernels.cosine_topk` streams."""
        offset = 0
        for number, shard in enumerate(self.shards):
            rows = int(shard["rows"])
            if rows:
                yield self.shard(number), offset
            offset += rows

    def search_keys(self, *, write: bool = True, verify: bool = True) -> Any:
        """The keys with their search-ready copy (``PreparedKeys``), written beside the shards the
        first time (see :mod:`headwater.engine.search_ready`): repeated searches then skip the
        per-search conversion pass. ``cosine_topk(queries, store.search_keys(), k)``."""
        from headwater.engine.search_ready import search_keys

        return search_keys(self, write=write, verify=verify)

    def vectors(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All vectors as one in-memory [N, d] tensor (``dtype`` default: the store's)."""
        out = torch.empty((len(self), self.dim), dtype=dtype or self.dtype)
        for block, offset in self.blocks():
            out[offset : offset + block.shape[0]] = block
        return out

    def check_compatible(self, **expected: Any) -> None:
        """Raise StoreError unless the manifest agrees with ``expected`` (see :func:`check_compatible`)."""
        check_compatible(self.manifest, what=str(self.root), **expected)


@dataclass
class StoredVectors:
    """Vectors read back from a store: ``vectors[i]`` belongs to ``pair_ids[i]``."""

    pair_ids: list[str]
    vectors: torch.Tensor  # [N, d]
    manifest: dict[str, Any] = field(default_factory=dict)


def read_store(store_dir: str | Path) -> StoredVectors:
    """Load a whole store into memory after checking every checksum; raises :class:`StoreError`."""
    store = VectorStore.open(store_dir, verify=True)
    return StoredVectors(store.pair_ids, store.vectors(), store.manifest)


def check_compatible(manifest: dict[str, Any], *, what: str = "the vector store", **expected: Any) -> None:
    """Refuse a store whose manifest disagrees with ``expected`` (e.g. model fingerprint, layer,
    dataset fingerprint), listing every difference with both values. ``None`` values are not checked."""
    diffs = [
        f"{key}: store has {manifest.get(key)!r}, expected {value!r}"
        for key, value in expected.items()
        if value is not None and manifest.get(key) != value
    ]
    if diffs:
        raise StoreError(f"{what} does not match: " + "; ".join(diffs))


def model_fingerprint(model: Any) -> str:
    """A cheap id of a model's architecture and weights: sha256 of its config and of a few
    parameter tensors spread through the network (enough to tell M0 from M1 without hashing
    gigabytes). Where the model was loaded from (``_name_or_path``) and the transformers
    version that wrote its config are left out: a copied or moved model is the same model."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for key in ("_name_or_path", "transformers_version"):
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    params = list(model.named_parameters())
    for name, param in params[:: max(1, len(params) // 8)]:
        digest.update(name.encode())
        digest.update(param.detach().flatten()[:4096].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint_ids(pair_ids: Iterable[str]) -> str:
    """The one dataset fingerprint rule: sha256 (64 hex digits) over the pair ids in order, each
    followed by a newline. Equal fingerprints, equal datasets (ids are content hashes)."""
    digest = hashlib.sha256()
    for pid in pair_ids:
        digest.update(str(pid).encode("utf-8") + b"\n")
    return digest.hexdigest()


def dataset_fingerprint(pairs: Iterable[Any]) -> str:
    """:func:`fingerprint_ids` of a dataset's pairs (a ``PreferenceDataset`` caches its own)."""
    fingerprint = getattr(pairs, "fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    return fingerprint_ids(pair.pair_id for pair in pairs)
