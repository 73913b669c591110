"""Search-ready keys: the same results as the raw keys on every path, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from topk_oracle import check_topk

from headwater.kernels import PreparedKeys, _dispatch, cosine_topk, prepare_keys
from headwater.kernels import topk as topk_module

pytestmark = pytest.mark.skipif(_dispatch.load_extension() is None, reason=str(_dispatch.extension_error()))


def _keys(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g)
    keys[3] = 0  # a zero row scores 0
    keys[5] *= 1e-30  # a row whose squares vanish in float32: rescaled, same cosine
    keys[7] = keys[11]  # exact duplicates tie; the lower index wins
    return keys


@pytest.mark.parametrize("screen", [True, False, None])
@pytest.mark.parametrize("q, k", [(1, 5), (7, 40), (70, 300)])
def test_prepared_keys_give_bit_identical_results(screen, q, k, monkeypatch):
    monkeypatch.setattr(topk_module, "SCREEN", screen)
    monkeypatch.setattr(topk_module, "SCREEN_BLOCK_BYTES", 1)  # many screened blocks
    keys = _keys(1500, 48, q)
    queries = torch.randn(q, 48, generator=torch.Generator().manual_seed(1))
    prepared = prepare_keys(keys, tile_rows=333)
    assert isinstance(prepared, PreparedKeys) and len(prepared) == 1500 and prepared.d == 48
    D, I = cosine_topk(queries, keys, k)
    D2, I2 = cosine_topk(queries, prepared, k)
    if screen is None or (screen is False and q > topk_module.FEW_QUERIES):
        # the float32 GEMM path (forced, or chosen by the cost model for one of the two): BLAS may
        # round a dot product differently in another tile shape
        torch.testing.assert_close(D, D2, atol=2e-6, rtol=0)
    else:
        assert torch.equal(D, D2) and torch.equal(I, I2)
    check_topk(D2, I2, queries, keys, k)
    # searched twice: the copies are reused, not consumed
    D3, I3 = cosine_topk(queries, prepared, k)
    assert torch.equal(D2, D3) and torch.equal(I2, I3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_dtypes_are_prepared_from_their_float32_rows(dtype, monkeypatch):
    monkeypatch.setattr(topk_module, "SCREEN", True)
    keys = torch.randn(400, 24, generator=torch.Generator().manual_seed(2)).to(dtype)
    queries = torch.randn(12, 24, generator=torch.Generator().manual_seed(3))
    prepared = prepare_keys(keys)
    D, I = cosine_topk(queries, keys, 9)
    D2, I2 = cosine_topk(queries, prepared, 9)
    assert torch.equal(D, D2) and torch.equal(I, I2)
    assert next(prepared.prepared_blocks()).rows.dtype == torch.float32


def test_prepared_keys_work_on_the_torch_backend_and_as_plain_blocks():
    keys = _keys(300, 16, 4)
    queries = torch.randn(5, 16, generator=torch.Generator().manual_seed(5))
    prepared = prepare_keys(keys)
    D, I = cosine_topk(queries, keys, 7, backend="torch")
    D2, I2 = cosine_topk(queries, prepared, 7, backend="torch")
    torch.testing.assert_close(D, D2, atol=1e-6, rtol=0)
    assert sum(block.shape[0] for block, _ in prepared) == 300


def test_bad_keys_are_refused_clearly():
    keys = torch.randn(50, 8)
    keys[17, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[17\]"):
        prepare_keys(keys)
    with pytest.raises(TypeError, match="search_keys"):
        prepare_keys(iter([(torch.randn(4, 8), 0)]))
    with pytest.raises(ValueError, match="2-D"):
        prepare_keys(torch.randn(8))


def test_prepared_blocks_check_their_shapes():
    from headwater.kernels import PreparedBlock

    with pytest.raises(ValueError, match="do not match"):
        PreparedBlock(torch.zeros(4, 3), 0, np.zeros(4, np.float32), torch.zeros(4, 2, dtype=torch.bfloat16),
                      np.zeros(4, np.float32))


def test_a_search_inside_another_searchs_key_iteration_is_correct(monkeypatch):
    """The screened path reuses per-thread work buffers between searches; a key source that
    searches while it is read (between two of the outer search's blocks) must not disturb it."""
    monkeypatch.setattr(topk_module, "SCREEN", True)
    g = torch.Generator().manual_seed(8)
    keys, queries, inner_queries = torch.randn(900, 32, generator=g), torch.randn(20, 32, generator=g), torch.randn(12, 32, generator=g)
    expected = cosine_topk(queries, keys, 15)
    inner_expected = cosine_topk(inner_queries, keys, 5)
    inner_results = []

    def blocks():
        for start in range(0, 900, 300):
            inner_results.append(cosine_topk(inner_queries, keys, 5))  # a search inside the iteration
            yield keys[start:start + 300], start

    D, I = cosine_topk(queries, blocks(), 15)
    assert torch.equal(D, expected[0]) and torch.equal(I, expected[1])
    assert all(torch.equal(r[1], inner_expected[1]) for r in inner_results)
    topk_module.release_workspace()
