"""pytest-benchmark suite for the kernels (CPU sizes that run in a minute or two here).

    python -m pytest bench/test_bench_topk.py --benchmark-enable --benchmark-columns=median,iqr,rounds

Each group holds the providers of one size on the same inputs, so its medians compare directly.
The side-by-side script ``bench/compare_topk.py`` prints ratios and peak memory at the larger
sizes of bench/RESULTS.md.
"""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from headwater.kernels import cosine_topk, masked_mean_pool, masked_mean_pool_diff

SIZES = {"Q1-N100k-d576": (1, 100_000, 576), "Q256-N100k-d576": (256, 100_000, 576), "Q64-N20k-d4096": (64, 20_000, 4096)}
K = 10


@pytest.fixture(scope="module", params=list(SIZES), ids=list(SIZES))
def size(request):
    q, n, d = SIZES[request.param]
    g = torch.Generator().manual_seed(0)
    return request.param, torch.randn(q, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("provider", ["headwater-auto", "headwater-torch", "torch-full", "faiss"])
def test_cosine_topk(benchmark, size, provider):
    name, xq, xb = size
    benchmark.group = f"cosine_topk {name}"
    if provider == "headwater-auto":
        fn = lambda: cosine_topk(xq, xb, K)  # noqa: E731
    elif provider == "headwater-torch":
        fn = lambda: cosine_topk(xq, xb, K, backend="torch")  # noqa: E731
    elif provider == "torch-full":

        def fn():
            s = torch.nn.functional.normalize(xq, dim=1) @ torch.nn.functional.normalize(xb, dim=1).T
            return torch.topk(s, K, dim=1)

    else:
        xq_np, xb_np = xq.numpy(), xb.numpy()

        def fn():
            q, b = xq_np.copy(), xb_np.copy()
            faiss.normalize_L2(q)
            faiss.normalize_L2(b)
            return faiss.knn(q, b, K, metric=faiss.METRIC_INNER_PRODUCT)

    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_mean_pool_diff(benchmark, dtype):
    benchmark.group = "masked_mean_pool"
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(32, 256, 576, generator=g).to(dtype)
    mask = torch.rand(32, 256, generator=g) < 0.5
    mask[:, 0] = True
    benchmark.pedantic(
        lambda: masked_mean_pool_diff(hidden[:16], mask[:16], hidden[16:], mask[16:]), rounds=5, warmup_rounds=1
    )


def test_masked_mean_pool(benchmark):
    benchmark.group = "masked_mean_pool"
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(32, 256, 576, generator=g)
    mask = torch.rand(32, 256, generator=g) < 0.5
    mask[:, 0] = True
    out = benchmark.pedantic(lambda: masked_mean_pool(hidden, mask), rounds=5, warmup_rounds=1)
    assert np.isfinite(out.numpy()).all()
