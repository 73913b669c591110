"""A store's search-ready copy: written once, verified, rebuilt when stale, same search results."""
from __future__ import annotations

import json

import pytest
import torch
from test_store import write_store

from headwater.engine.search_ready import SEARCH_DIR, SEARCH_MANIFEST
from headwater.engine.store import StoreError, VectorStore
from headwater.kernels import _dispatch, cosine_topk
from headwater.kernels import topk as topk_module

pytestmark = pytest.mark.skipif(_dispatch.load_extension() is None, reason=str(_dispatch.extension_error()))


def _store(tmp_path, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(700, 32, generator=g)
    vectors[10] = 0
    vectors[20] *= 1e-30  # rescaled inside: the copy keeps its own float32 rows
    write_store(tmp_path, [f"p{i}" for i in range(700)], vectors, {"model": "m"}, shard_rows=256, dtype=dtype)
    return VectorStore.open(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_search_keys_match_the_shards_and_are_written_once(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(topk_module, "SCREEN", True)
    store = _store(tmp_path, dtype)
    queries = torch.randn(20, 32, generator=torch.Generator().manual_seed(9))
    D, I = cosine_topk(queries, store.blocks(), 25)
    keys = store.search_keys()
    D2, I2 = cosine_topk(queries, keys, 25)
    assert torch.equal(D, D2) and torch.equal(I, I2)
    manifest = json.loads((tmp_path / SEARCH_DIR / SEARCH_MANIFEST).read_text())
    rows_files = [s["index"] for s in manifest["shards"] if "rows" in s["files"]]
    # float16 shards keep float32 rows; a float32 store only for the shard with the rescaled row
    assert rows_files == ([0, 1, 2] if dtype == torch.float16 else [0])
    stamp = (tmp_path / SEARCH_DIR / "unit-00001.npy").stat().st_mtime_ns
    again = VectorStore.open(tmp_path).search_keys()  # verified, not rewritten
    assert (tmp_path / SEARCH_DIR / "unit-00001.npy").stat().st_mtime_ns == stamp
    D3, I3 = cosine_topk(queries, again, 25)
    assert torch.equal(D, D3) and torch.equal(I, I3)


def test_a_corrupt_copy_is_refused_and_a_missing_one_is_not_invented(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(StoreError, match="no current search-ready copy"):
        store.search_keys(write=False)
    store.search_keys()
    path = tmp_path / SEARCH_DIR / "norms-00002.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="norms-00002.npy is missing or corrupt"):
        VectorStore.open(tmp_path).search_keys()


def test_a_stale_or_interrupted_copy_is_rebuilt(tmp_path):
    _store(tmp_path, seed=0).search_keys()
    # the store is rewritten with other vectors: the copy's source checksums no longer match
    store = _store(tmp_path, seed=1)
    queries = torch.randn(9, 32, generator=torch.Generator().manual_seed(2))
    D, I = cosine_topk(queries, store.blocks(), 5)
    D2, I2 = cosine_topk(queries, store.search_keys(), 5)
    assert torch.equal(D, D2) and torch.equal(I, I2)
    # a build killed before its manifest: the files are there, the manifest is not
    (tmp_path / SEARCH_DIR / SEARCH_MANIFEST).unlink()
    D3, I3 = cosine_topk(queries, VectorStore.open(tmp_path).search_keys(), 5)
    assert torch.equal(D, D3) and torch.equal(I, I3)
