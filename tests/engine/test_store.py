"""The vector store round-trips and refuses corrupt or mismatched contents."""
from __future__ import annotations

import json

import pytest
import torch

from headwater.engine.store import StoreError, check_compatible, model_fingerprint, read_store, write_store


def test_round_trip_across_shards(tmp_path):
    ids = [f"id{i}" for i in range(10)]
    vectors = torch.randn(10, 6)
    write_store(tmp_path, ids, vectors, {"layer": 3, "model": "m"}, shard_rows=4)
    store = read_store(tmp_path)
    assert store.pair_ids == ids and len(store.manifest["shards"]) == 3
    torch.testing.assert_close(store.vectors, vectors)
    assert store.manifest["layer"] == 3


def test_corrupt_shard_missing_manifest_and_mismatch(tmp_path):
    write_store(tmp_path, ["a", "b"], torch.randn(2, 4), {"layer": 3, "model_fingerprint": "abc"})
    shard = tmp_path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        read_store(tmp_path)
    with pytest.raises(StoreError, match="layer: store has 3, expected 5"):
        check_compatible(json.loads((tmp_path / "manifest.json").read_text()), layer=5, model_fingerprint="abc")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="manifest.json is missing"):
        read_store(tmp_path)


def test_model_fingerprint_tells_weights_apart(tiny_tokenizer):
    from conftest import build_tiny_llama

    a, b = build_tiny_llama(tiny_tokenizer, seed=0), build_tiny_llama(tiny_tokenizer, seed=1)
    assert model_fingerprint(a) == model_fingerprint(build_tiny_llama(tiny_tokenizer, seed=0))
    assert model_fingerprint(a) != model_fingerprint(b)
