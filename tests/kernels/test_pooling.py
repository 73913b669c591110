"""masked_mean_pool and the fused pair difference: every backend against the torch reference and
a float64 computation."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.kernels import (
    EmptyMaskError,
    _dispatch,
    masked_mean_pool,
    masked_mean_pool_diff,
)
from headwater.kernels.pooling import masked_mean_pool_diff_reference, masked_mean_pool_reference

_no_triton = _dispatch.triton_unavailable_reason(torch.device("cpu"))
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(_no_triton is not None, reason=str(_no_triton)))]

# On a CUDA machine the Triton backend runs on the GPU: inputs move there, results come back.
_TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _dev(backend, *tensors):
    device = _TRITON_DEVICE if backend == "triton" else "cpu"
    return [t.to(device) for t in tensors]


def pool(hidden, mask, *, backend, **kwargs):
    return masked_mean_pool(*_dev(backend, hidden, mask), backend=backend, **kwargs).cpu()


def pool_diff(hc, mc, hr, mr, *, backend, **kwargs):
    return masked_mean_pool_diff(*_dev(backend, hc, mc, hr, mr), backend=backend, **kwargs).cpu()


# (dtype, atol): the float64 oracle pools the same rounded inputs, so only fp32 summation error
# remains for every input dtype
DTYPES = [(torch.float32, 1e-5), (torch.float16, 1e-5), (torch.bfloat16, 1e-5)]


def _pool64(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(torch.float64)
    return torch.einsum("btd,bt->bd", hidden.to(torch.float64), w) / w.sum(1, keepdim=True)


def _inputs(b, t, d, dtype, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(b, t, d, generator=g) * 3).to(dtype)
    mask = torch.rand(b, t, generator=g) < p
    mask[:, 0] = True  # no empty row
    return hidden, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("b, t, d", [(1, 1, 1), (3, 17, 33), (2, 130, 70), (5, 9, 1025)])
def test_pool_matches_float64(backend, dtype, atol, b, t, d):
    hidden, mask = _inputs(b, t, d, dtype, seed=b + t + d)
    out = pool(hidden, mask, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (b, d)
    torch.testing.assert_close(out.double(), _pool64(hidden, mask), atol=atol, rtol=1e-5)
    torch.testing.assert_close(out, masked_mean_pool_reference(hidden, mask), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_normalize_and_zero_rows(backend):
    hidden, mask = _inputs(3, 8, 16, torch.float32)
    hidden[1] = 0
    out = pool(hidden, mask, normalize=True, backend=backend)
    assert not torch.isnan(out).any()
    assert torch.all(out[1] == 0)
    torch.testing.assert_close(out[[0, 2]].norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_ignores_masked_positions_even_when_not_finite(backend):
    hidden, mask = _inputs(2, 10, 8, torch.float32)
    mask[:, 5:] = False
    expected = masked_mean_pool(hidden, mask, backend="torch")
    hidden[:, 5:] = 1e30  # padding garbage must not leak into the mean
    torch.testing.assert_close(pool(hidden, mask, backend=backend), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_mask_and_strided_views(backend):
    hidden, mask = _inputs(4, 12, 24, torch.float32)
    both = torch.cat([hidden, hidden.flip(0)], dim=0)  # one padded batch holding both sides
    both_mask = torch.cat([mask, mask.flip(0)], dim=0).to(torch.int64)
    out = pool_diff(both[:4], both_mask[:4], both[4:], both_mask[4:], backend=backend)
    expected = _pool64(hidden, mask) - _pool64(hidden.flip(0), mask.flip(0))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
def test_pair_difference_matches_float64(backend, dtype, atol, normalize):
    hc, mc = _inputs(3, 20, 40, dtype, seed=1)
    hr, mr = _inputs(3, 7, 40, dtype, seed=2)  # different lengths on the two sides
    out = pool_diff(hc, mc, hr, mr, normalize=normalize, backend=backend)
    expected = _pool64(hc, mc) - _pool64(hr, mr)
    if normalize:
        expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=1e-5)
    ref = masked_mean_pool_diff_reference(hc, mc, hr, mr, normalize=normalize)
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_sides_give_zero_never_nan(backend):
    hc, mc = _inputs(2, 6, 8, torch.float32)
    out = pool_diff(hc, mc, hc, mc, normalize=True, backend=backend)
    assert torch.all(out == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_masks_are_reported(backend):
    hidden, mask = _inputs(3, 5, 4, torch.float32)
    mask[2] = False
    with pytest.raises(EmptyMaskError, match=r"rows \[2\]"):
        pool(hidden, mask, backend=backend)
    with pytest.raises(EmptyMaskError, match=r"rejected response mask is empty for rows \[2\]"):
        pool_diff(hidden, torch.ones_like(mask), hidden, mask, backend=backend)


def test_bad_shapes_and_backends():
    hidden, mask = _inputs(2, 5, 4, torch.float32)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\]"):
        masked_mean_pool(hidden, mask[:, :3])
    with pytest.raises(ValueError, match="must agree on B and d"):
        masked_mean_pool_diff(hidden, mask, hidden[:1], mask[:1])
    with pytest.raises(ValueError, match="backend must be one of"):
        masked_mean_pool(hidden, mask, backend="cpp")


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 20),
    d=st.integers(1, 40),
    p=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
)
def test_property_pool_torch_vs_float64(b, t, d, p, seed):
    hidden, mask = _inputs(b, t, d, torch.float32, seed=seed, p=p)
    out = masked_mean_pool(hidden, mask, backend="torch")
    torch.testing.assert_close(out.double(), _pool64(hidden, mask), atol=1e-5, rtol=1e-5)
