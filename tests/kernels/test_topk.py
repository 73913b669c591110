"""cosine_topk: every backend against the torch reference and a float64 computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topk_oracle import check_topk

from headwater.kernels import _dispatch, cosine_topk, cosine_topk_reference
from headwater.kernels import topk as topk_module

BACKENDS = [
    "torch",
    *(
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                _dispatch.load_extension() is None, reason=str(_dispatch.extension_error())
            ),
        )
        for name in ("cpp-blas", "cpp-screen")  # the C++ backend with and without bf16 screening
    ),
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            _dispatch.triton_unavailable_reason(torch.device("cpu")) is not None,
            reason=str(_dispatch.triton_unavailable_reason(torch.device("cpu"))),
        ),
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# On a CUDA machine the Triton backend runs on the GPU (the interpreter is not set there);
# inputs are moved to the device and results come back for the float64 oracle.
_TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def topk(queries, keys, k, *, backend, **kwargs):
    if backend == "triton" and _TRITON_DEVICE == "cuda":
        queries = queries.to(_TRITON_DEVICE)
        if isinstance(keys, torch.Tensor):
            keys = keys.to(_TRITON_DEVICE)
    screen = None
    if backend.startswith("cpp-"):  # every C++ path, whatever this CPU would pick by itself
        backend, screen = "cpp", backend == "cpp-screen"
    saved, topk_module.SCREEN = topk_module.SCREEN, screen
    try:
        D, I = cosine_topk(queries, keys, k, backend=backend, **kwargs)
    finally:
        topk_module.SCREEN = saved
    return D.cpu(), I.cpu()


def _data(q: int, n: int, d: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g).to(dtype), torch.randn(n, d, generator=g).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "q, n, d, k, tile_rows",
    [
        (1, 1, 1, 1, None),  # tiny
        (1, 200, 33, 5, 64),  # Q = 1, ragged tiles
        (7, 300, 19, 10, 37),  # odd everything
        (4, 5, 8, 9, None),  # k > N: missing slots
        (3, 50, 16, 50, 16),  # k == N
        (9, 129, 65, 1, 128),  # k = 1, one-row last tile
        (20, 150, 24, 7, None),  # more queries than one Triton query block
    ],
)
def test_matches_reference_and_float64(backend, q, n, d, k, tile_rows):
    xq, xb = _data(q, n, d, seed=q * 1000 + n)
    D, I = topk(xq, xb, k, backend=backend, tile_rows=tile_rows)
    check_topk(D, I, xq, xb, k)
    D_ref, I_ref = cosine_topk_reference(xq, xb, k)
    check_topk(D_ref, I_ref, xq, xb, k)
    torch.testing.assert_close(D, D_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_input_dtype(backend, dtype):
    xq, xb = _data(3, 90, 24, dtype, seed=7)
    D, I = topk(xq, xb, 6, backend=backend, tile_rows=32)
    # the float64 oracle starts from the same rounded fp16/bf16 values, so only fp32
    # accumulation error remains
    check_topk(D, I, xq, xb, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_score_zero_never_nan(backend):
    xq, xb = _data(3, 40, 12, seed=3)
    xq[1] = 0
    xb[5] = 0
    xb[17] = 0
    D, I = topk(xq, xb, 40, backend=backend, tile_rows=16)
    assert not torch.isnan(D).any()
    assert torch.all(D[1] == 0), "a zero query scores 0 against every key"
    assert I[1].tolist() == list(range(40)), "all-equal scores come out in index order"
    check_topk(D, I, xq, xb, 40)
    for row in (0, 2):
        zero_keys = D[row][torch.isin(I[row], torch.tensor([5, 17]))]
        assert torch.all(zero_keys == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicated_keys_tie_break_by_lower_index(backend):
    # Small integers: every dot product is exact in float32 whatever the summation order, so the
    # copies of a key score bit-identically on every backend (a BLAS may sum a row differently at
    # another column position; on this CPU kind the Triton interpreter's numpy matmul does).
    xq, base = (x.round().clamp(-4, 4) for x in _data(4, 10, 16, seed=11))
    # 10 distinct keys, each repeated 5 times, interleaved so copies land in different tiles
    xb = base.repeat(5, 1)  # row r is base[r % 10]
    D, I = topk(xq, xb, 12, backend=backend, tile_rows=50)
    for row in range(4):
        best = torch.argmax(xq[row] @ (base / base.norm(dim=1, keepdim=True)).T).item()
        assert I[row, :5].tolist() == [best + 10 * j for j in range(5)]
        assert torch.all(D[row, :5] == D[row, 0])
    check_topk(D, I, xq, xb, 12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_straddling_k_keep_lower_indices(backend):
    xq = torch.ones(2, 4)
    xb = torch.ones(30, 4)  # every key ties
    D, I = topk(xq, xb, 7, backend=backend, tile_rows=8)
    assert I.tolist() == [list(range(7))] * 2
    torch.testing.assert_close(D, torch.ones(2, 7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_blocks_with_offsets_any_order(backend, tmp_path):
    xq, xb = _data(5, 230, 20, seed=5)
    mm = np.lib.format.open_memmap(tmp_path / "keys.npy", mode="w+", dtype=np.float32, shape=(230, 20))
    mm[:] = xb.numpy()
    mm.flush()
    keys = np.load(tmp_path / "keys.npy", mmap_mode="r")
    # shards out of order, mixing a memmap slice, a tensor and an fp16 array
    blocks = [
        (keys[100:230], 100),
        (xb[0:60], 0),
        (xb[60:100].numpy(), 60),
    ]
    D, I = topk(xq, iter(blocks), 15, backend=backend, tile_rows=32)
    check_topk(D, I, xq, xb, 15)
    D_whole, I_whole = topk(xq, keys, 15, backend=backend, tile_rows=32)
    check_topk(D_whole, I_whole, xq, xb, 15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_with_gaps_return_only_covered_rows(backend):
    xq, xb = _data(2, 50, 8, seed=9)
    blocks = [(xb[0:10], 0), (xb[30:50], 30)]
    D, I = topk(xq, blocks, 40, backend=backend)
    valid = np.zeros(50, dtype=bool)
    valid[0:10] = valid[30:50] = True
    check_topk(D, I, xq, xb, 40, valid=valid)


def test_numpy_queries_and_empty_inputs():
    xq, xb = _data(3, 20, 8, seed=1)
    D, I = cosine_topk(xq.numpy(), xb.numpy(), 4)
    check_topk(D, I, xq, xb, 4)
    D, I = cosine_topk(xq, xb, 0)
    assert D.shape == (3, 0) and I.shape == (3, 0)
    D, I = cosine_topk(xq[:0], xb, 4)
    assert D.shape == (0, 4)
    D, I = cosine_topk(xq, xb[:0], 4)
    assert torch.all(I == -1) and torch.all(torch.isneginf(D))


@pytest.mark.parametrize(
    "queries, keys, k, error, match",
    [
        (torch.ones(2, 3), torch.ones(4, 5), 1, ValueError, r"keys must be 2-D \[n, d=3\]"),
        (torch.ones(3), torch.ones(4, 3), 1, ValueError, "queries must be 2-D"),
        (torch.ones(2, 3), torch.ones(4, 3), -1, ValueError, "k must be a non-negative int"),
        (torch.ones(2, 3, dtype=torch.int32), torch.ones(4, 3), 1, TypeError, "queries must be float"),
        (torch.ones(2, 3), [(torch.ones(2, 3), -5)], 1, ValueError, "block 0: global_offset"),
        (torch.ones(2, 3), [(torch.ones(2, 3), 0), (torch.ones(2, 3), 1)], 1, ValueError, "block 1 covers"),
        (torch.ones(2, 3), [torch.ones(2, 3)], 1, TypeError, r"\(block, global_offset\) pair"),
        (torch.ones(2, 3), torch.tensor([[1.0, 2, 3], [1, float("nan"), 0]]), 1, ValueError, r"keys rows \[1\]"),
        (torch.tensor([[float("inf"), 0, 0]]), torch.ones(4, 3), 1, ValueError, r"queries rows \[0\]"),
    ],
)
def test_bad_input_names_the_problem(queries, keys, k, error, match):
    with pytest.raises(error, match=match):
        cosine_topk(queries, keys, k, backend="torch")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter warns about the inf it is fed
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [1, 12])  # the C++ backend's fused few-query pass and its BLAS path
def test_non_finite_key_row_is_named(backend, q):
    xq, xb = _data(q, 40, 6, seed=2)
    xb[33, 2] = float("inf")
    with pytest.raises(ValueError, match=r"keys rows \[33\]"):
        topk(xq, xb, 3, backend=backend, tile_rows=16)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        cosine_topk(torch.ones(1, 2), torch.ones(1, 2), 1, backend="cuda")


@st.composite
def _problems(draw):
    q = draw(st.integers(1, 5))
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 9))
    k = draw(st.integers(0, 45))
    tile_rows = draw(st.integers(1, 17))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    # small integers make exact ties, zero rows and duplicates common
    xq = torch.from_numpy(g.integers(-2, 3, size=(q, d)).astype(np.float32))
    xb = torch.from_numpy(g.integers(-2, 3, size=(n, d)).astype(np.float32))
    if n > 2 and draw(st.booleans()):
        xb[n // 2] = xb[0]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return xq, xb, k, tile_rows, cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=_problems(), backend=st.sampled_from(["torch", "cpp-blas", "cpp-screen"]))
def test_property_streamed_equals_float64(problem, backend):
    if backend.startswith("cpp") and _dispatch.load_extension() is None:
        backend = "torch"
    xq, xb, k, tile_rows, cuts = problem
    bounds = [0, *cuts, xb.shape[0]]
    blocks = [(xb[a:b], a) for a, b in zip(bounds[:-1], bounds[1:])][::-1]
    D, I = topk(xq, blocks, k, backend=backend, tile_rows=tile_rows)
    check_topk(D, I, xq, xb, k)
    D_ref, I_ref = cosine_topk_reference(xq, xb, k)
    # with small-integer inputs the float32 scores of equal cosines are bitwise equal only up to
    # rounding, so compare with the oracle's tie tolerance rather than exactly
    torch.testing.assert_close(D, D_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_k_beyond_triton_limit(backend):
    xq, xb = _data(2, 300, 8, seed=4)
    D, I = topk(xq, xb, 140, backend=backend, tile_rows=128)
    check_topk(D, I, xq, xb, 140)


_no_triton = _dispatch.triton_unavailable_reason(torch.device("cpu"))


@pytest.mark.skipif(_no_triton is not None, reason=str(_no_triton))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=_problems())
def test_property_triton_equals_float64(problem):
    xq, xb, k, tile_rows, cuts = problem
    bounds = [0, *cuts, xb.shape[0]]
    blocks = [(xb[a:b], a) for a, b in zip(bounds[:-1], bounds[1:])]
    # few, larger tiles: the interpreter pays per launch
    D, I = topk(xq, blocks, k, backend="triton", tile_rows=max(tile_rows, 16))
    check_topk(D, I, xq, xb, k)


@pytest.mark.skipif(_dispatch.load_extension() is None, reason=str(_dispatch.extension_error()))
@pytest.mark.parametrize("d", [3, 64, 1024])
def test_screening_is_exact_below_bfloat16_resolution(d, monkeypatch):
    """Keys that differ from each other far below bfloat16 precision: the screen cannot tell them
    apart, so the exact float32 scores must decide, and the order must match float64."""
    g = torch.Generator().manual_seed(d)
    xq = torch.randn(12, d, generator=g)
    base = torch.randn(1, d, generator=g)
    near = base + 1e-4 * torch.randn(300, d, generator=g)  # cosines within ~1e-4 of each other
    xb = torch.cat([torch.randn(500, d, generator=g), near, xq[:2] * 3, torch.zeros(2, d)])
    xb = xb[torch.randperm(xb.shape[0], generator=g)]
    for k in (1, 10, 400):
        D, I = topk(xq, xb, k, backend="cpp-screen", tile_rows=97)
        check_topk(D, I, xq, xb, k)
        D_blas, I_blas = topk(xq, xb, k, backend="cpp-blas", tile_rows=97)
        torch.testing.assert_close(D, D_blas, atol=2e-6, rtol=0)
    # one big key tile screened in sub-blocks of 256 rows
    monkeypatch.setattr(topk_module, "SCREEN_BLOCK_BYTES", 1)
    D, I = topk(xq, xb, 10, backend="cpp-screen")
    check_topk(D, I, xq, xb, 10)


@pytest.mark.skipif(_dispatch.load_extension() is None, reason=str(_dispatch.extension_error()))
@pytest.mark.parametrize("seed", range(6))
def test_screened_large_k_over_many_blocks_and_chunks(seed, monkeypatch):
    """Large k against many small screened blocks and query chunks (kept sets that fill over
    several blocks, blocks smaller than k), duplicate keys (exact ties decided by index), zero
    keys: same results as the unscreened C++ path and the float64 oracle."""
    monkeypatch.setattr(topk_module, "SCREEN_BLOCK_BYTES", 1)
    monkeypatch.setattr(topk_module, "SCREEN_MAX_ROWS", 64)
    monkeypatch.setattr(topk_module, "SCREEN_SCORE_BYTES", 1)
    g = torch.Generator().manual_seed(seed)
    d = [5, 48, 300][seed % 3]
    xq = torch.randn(70, d, generator=g)
    base = torch.randn(900, d, generator=g)
    xb = torch.cat([base, base[:200], base[:50] * 4, torch.zeros(3, d)])[torch.randperm(1153, generator=g)]
    for k in (1, 37, 300, 1200):
        D, I = topk(xq, xb, k, backend="cpp-screen", tile_rows=[97, 256, 1153][seed % 3])
        check_topk(D, I, xq, xb, k)
        D_blas, I_blas = topk(xq, xb, k, backend="cpp-blas")
        torch.testing.assert_close(D, D_blas, atol=2e-6, rtol=0)  # indices may differ in near-ties only


@pytest.mark.skipif(_dispatch.load_extension() is None, reason=str(_dispatch.extension_error()))
@pytest.mark.parametrize("d", [8, 576, 4096])
def test_screening_bound_holds_for_every_pair(d):
    """|bfloat16 screening score - float32 score| <= delta[row] + rel·|screening score| for every
    pair, on random rows and on rows built so that every element rounds the same way (the
    Cauchy-Schwarz worst case), with the C++ unit rows and the GEMM the search uses."""
    ext = _dispatch.load_extension()
    g = torch.Generator().manual_seed(d)
    aligned = torch.ones(4, d) * (1 + 2.0**-9 * torch.arange(1, 5)[:, None])  # each element rounds alike
    xq = torch.cat([torch.randn(60, d, generator=g), aligned])
    xb = torch.cat([torch.randn(2000, d, generator=g), aligned, xq[:8] * 7.5, torch.zeros(1, d)])
    xq_hat = torch.nn.functional.normalize(xq, dim=1)
    xq_bf16 = xq_hat.bfloat16()
    n = xb.shape[0]
    inv, unit, errors = torch.empty(n), torch.empty(n, d, dtype=torch.bfloat16), np.empty(n, dtype=np.float32)
    assert ext.unit_rows_bf16(xb.numpy(), inv.numpy(), unit.view(torch.int16).numpy(), errors) == -1
    true_errors = (unit.double() - xb.double() * inv.double()[:, None]).norm(dim=1).numpy()
    assert (errors >= true_errors).all() and (errors <= true_errors * 1.01 + 1e-6).all()
    approx = (xq_bf16 @ unit.T).float()  # bfloat16 output, as in the search
    exact = (xq_hat @ xb.T) * inv[None, :]
    deltas = topk_module.screening_deltas(*topk_module.screening_bounds(xq_hat, xq_bf16), float(errors.max()), d)
    bound = torch.from_numpy(deltas)[:, None] + topk_module.SCREEN_RELATIVE * approx.abs()
    gap = (approx - exact).abs()
    assert (gap <= bound).all()
    # and the bound is tight enough to screen: a few times the typical error, not the worst case
    assert deltas.max() < 1.5 * topk_module.BF16_UNIT_ROUNDOFF + 2 * d * 2.0**-24 + 2e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e-22, 1e-25, 1e-30, 1e-40, 1e25, 1e35])
def test_rows_of_extreme_scale_score_their_true_cosine(backend, scale):
    """A cosine does not depend on a row's scale: keys and queries whose squares leave float32's
    normal range (tiny: subnormal or vanished; huge: overflow) still get their float64 cosine."""
    xq, xb = _data(3, 60, 24, seed=9)
    xb[::4] *= scale  # every fourth key, across tiles
    xq[1] *= scale
    xb[7] = 0.0  # a true zero row still scores 0
    D, I = topk(xq, xb, 12, backend=backend, tile_rows=25)
    check_topk(D, I, xq, xb, 12)
    assert float(D.max()) <= 1.0 + 1e-6
    D_all, I_all = topk(xq, xb, 60, backend=backend, tile_rows=25)
    assert float(D_all[0][I_all[0] == 7]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_rows_beyond_float32_range_are_scaled_not_flushed(backend):
    xq, xb = _data(2, 30, 16, seed=10)
    xb = xb.to(torch.float64)
    xb[::3] *= 1e-60  # would round to 0 in float32
    xb[1::3] *= 1e60  # would round to infinity
    D, I = topk(xq, xb, 30, backend=backend)
    check_topk(D, I, xq, xb, 30)
