"""The vector store round-trips, memory-maps its shards, and refuses corrupt or mismatched contents."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headwater.engine.store import (
    ShardRecord,
    StoreError,
    VectorStore,
    check_compatible,
    clear_store,
    dtype_name,
    finish_run,
    model_fingerprint,
    read_store,
    start_run,
    write_shard,
)


def write_store(  # a store from in-memory vectors through the engine's shard writer
    out_dir: str | Path,
    pair_ids: list[str],
    vectors: torch.Tensor,
    manifest: dict[str, Any],
    *,
    shard_rows: int = 65536,
    dtype: torch.dtype | str = torch.float32,
) -> Path:
    """Write in-memory vectors [N, d] as a store, in shards of ``shard_rows``, replacing what is there.

    ``manifest`` holds the provenance (model, layer, ...); the shard list, counts and checksums are
    added. The manifest is written last, so a directory without one is an unfinished write.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vectors.dim() != 2 or vectors.shape[0] != len(pair_ids):
        raise StoreError(f"vectors must be [N, d] with N = {len(pair_ids)} pair ids, got {tuple(vectors.shape)}")
    if shard_rows < 1:
        raise StoreError(f"shard_rows must be positive, got {shard_rows}")
    name = dtype_name(dtype)
    clear_store(out)
    records = []
    for index, start in enumerate(range(0, max(len(pair_ids), 1), shard_rows)):
        stop = min(start + shard_rows, len(pair_ids))
        record = ShardRecord(index, start, stop, 0, "", pair_ids=list(pair_ids[start:stop]))
        records.append(write_shard(out, record, vectors[start:stop], name))
    finish_run(out, {**manifest, "dtype": name}, records, {"dim": int(vectors.shape[1])})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_across_shards(tmp_path, dtype):
    ids = [f"id{i}" for i in range(10)]
    vectors = torch.randn(10, 6)
    write_store(tmp_path, ids, vectors, {"layer": 3, "model": "m"}, shard_rows=4, dtype=dtype)
    store = read_store(tmp_path)
    assert store.pair_ids == ids and len(store.manifest["shards"]) == 3
    assert store.vectors.dtype == dtype and store.manifest["dtype"] == str(dtype).removeprefix("torch.")
    assert torch.equal(store.vectors, vectors.to(dtype))  # bit-exact, bfloat16 included
    assert store.manifest["layer"] == 3 and store.manifest["n_vectors"] == 10 and store.manifest["dim"] == 6


def test_shards_are_memory_mapped_blocks_with_global_offsets(tmp_path):
    vectors = torch.randn(10, 6)
    write_store(tmp_path, [str(i) for i in range(10)], vectors, {}, shard_rows=4)
    store = VectorStore.open(tmp_path)
    blocks = list(store.blocks())
    assert [offset for _, offset in blocks] == [0, 4, 8]
    for block, offset in blocks:
        assert torch.equal(block, vectors[offset : offset + block.shape[0]])
    # A mapped block shows a write made to the file after it was opened; a copy would not.
    block = store.shard(1)
    on_disk = np.load(tmp_path / "shard-00001.npy", mmap_mode="r+")
    on_disk[0, 0] = 123.0
    on_disk.flush()
    assert float(block[0, 0]) == 123.0


def test_corrupt_truncated_and_missing_shards_are_detected(tmp_path):
    write_store(tmp_path, ["a", "b", "c"], torch.randn(3, 4), {"layer": 3, "model_fingerprint": "abc"}, shard_rows=2)
    shard = tmp_path / "shard-00000.npy"
    original = shard.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard-00000.npy is corrupt"):
        read_store(tmp_path)
    shard.write_bytes(original[:-4])
    with pytest.raises(StoreError, match="corrupt"):
        VectorStore.open(tmp_path)
    with pytest.raises(StoreError, match="cannot be read|shape"):  # without verification: the header catches it
        VectorStore.open(tmp_path, verify=False).shard(0)
    shard.unlink()
    with pytest.raises(StoreError, match="shard-00000.npy listed in the manifest is missing"):
        read_store(tmp_path)


def test_tampered_ids_missing_manifest_and_mismatch(tmp_path):
    write_store(tmp_path, ["a", "b"], torch.randn(2, 4), {"layer": 3, "model_fingerprint": "abc"})
    with pytest.raises(StoreError, match="layer: store has 3, expected 5"):
        check_compatible(json.loads((tmp_path / "manifest.json").read_text()), layer=5, model_fingerprint="abc")
    (tmp_path / "pair_ids.txt").write_text("a\nz\n")
    with pytest.raises(StoreError, match="pair_ids.txt is missing or does not match the manifest's checksum"):
        read_store(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="manifest.json is missing"):
        read_store(tmp_path)


def test_start_run_refuses_existing_runs_and_names_every_difference(tmp_path):
    header = {"model_fingerprint": "m0", "layer": 3, "dataset_fingerprint": "d", "dtype": "float32", "shard_pairs": 8}
    assert start_run(tmp_path, header, resume=False) is None
    with pytest.raises(StoreError, match="already holds a vector store run"):
        start_run(tmp_path, header, resume=False)
    assert start_run(tmp_path, header, resume=True) is None
    other = {**header, "model_fingerprint": "m1", "layer": 4}
    with pytest.raises(StoreError, match="model_fingerprint: store has 'm0', expected 'm1'; layer: store has 3, expected 4"):
        start_run(tmp_path, other, resume=True)
    assert start_run(tmp_path, other, resume=False, overwrite=True) is None
    assert json.loads((tmp_path / "run.json").read_text())["layer"] == 4


def test_model_fingerprint_tells_weights_apart(tiny_tokenizer):
    from tiny_models import build_tiny_llama

    a, b = build_tiny_llama(tiny_tokenizer, seed=0), build_tiny_llama(tiny_tokenizer, seed=1)
    assert model_fingerprint(a) == model_fingerprint(build_tiny_llama(tiny_tokenizer, seed=0))
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_moved_model_keeps_its_fingerprint(tmp_path, tiny_llama, tiny_tokenizer):
    import shutil

    from headwater.engine.models import load_model

    tiny_llama.save_pretrained(tmp_path / "a")
    tiny_tokenizer.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.model.embed_tokens.weight.add_(1.0)  # a tensor the fingerprint samples
    assert model_fingerprint(a) != model_fingerprint(b)
