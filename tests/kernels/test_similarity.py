"""Blockwise cosine similarity (the clustering stage's S) against float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from topk_oracle import cosine64

from headwater.kernels import cosine_similarity, cosine_similarity_blocks


def _data(q, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_blocks_cover_every_key_once_and_match_float64(dtype):
    xq, xb = _data(5, 103, 17)
    xq, xb = xq.to(dtype), xb.to(dtype)
    xb[4] = 0
    seen = np.zeros(103, dtype=int)
    expected = cosine64(xq, xb)
    for block, offset in cosine_similarity_blocks(xq, xb, tile_rows=16):
        assert block.dtype == torch.float32 and block.shape[0] == 5 and block.shape[1] <= 16
        np.testing.assert_allclose(block.numpy(), expected[:, offset : offset + block.shape[1]], atol=2e-6)
        seen[offset : offset + block.shape[1]] += 1
    assert np.all(seen == 1)


def test_full_matrix_from_streamed_shards_with_a_gap():
    xq, xb = _data(3, 60, 8, seed=1)
    shards = [(xb[40:60].numpy(), 40), (xb[0:25], 0)]  # rows 25..39 are in no shard
    S = cosine_similarity(xq, iter(shards), n_keys=60)
    expected = cosine64(xq, xb)
    np.testing.assert_allclose(S[:, :25].numpy(), expected[:, :25], atol=2e-6)
    np.testing.assert_allclose(S[:, 40:].numpy(), expected[:, 40:], atol=2e-6)
    assert torch.all(S[:, 25:40] == 0)
    S2 = cosine_similarity(xq, iter(shards))  # N inferred from the largest index seen
    assert S2.shape == (3, 60)
    torch.testing.assert_close(S2, S)


def test_full_matrix_refuses_to_exceed_max_bytes():
    xq, xb = _data(4, 100, 8)
    with pytest.raises(MemoryError, match=r"\[4, 100\] needs 1600 bytes"):
        cosine_similarity(xq, xb, max_bytes=1000)
    with pytest.raises(MemoryError, match="max_bytes=1000"):
        cosine_similarity(xq, [(xb, 0)], max_bytes=1000, tile_rows=10)
    assert cosine_similarity(xq, xb, max_bytes=1600).shape == (4, 100)


def test_zero_query_rows_give_zero_similarity():
    xq, xb = _data(2, 10, 4)
    xq[0] = 0
    S = cosine_similarity(xq, xb)
    assert torch.all(S[0] == 0) and not torch.isnan(S).any()


def test_similarity_of_rows_of_extreme_scale():
    from topk_oracle import cosine64

    from headwater.kernels.similarity import normalize_rows

    g = torch.Generator().manual_seed(3)
    xq, xb = torch.randn(2, 8, generator=g), torch.randn(9, 8, generator=g)
    xb[0] *= 1e-25
    xb[1] *= 1e-42
    xb[2] *= 1e30
    xq[0] *= 1e-30
    torch.testing.assert_close(cosine_similarity(xq, xb).double(), torch.from_numpy(cosine64(xq, xb)), atol=1e-6, rtol=0)
    unit = normalize_rows(xb)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(9), atol=1e-6, rtol=0)
