"""The search cost model on this machine: measured rates, and each path's predicted and measured
time side by side for a set of shapes (so the model's choices can be checked, not trusted).

Usage::

    python bench/search_plan.py                 # default shapes, N = 50,000
    python bench/search_plan.py --n 200000 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict

import torch

from headwater.kernels import _dispatch, topk
from headwater.kernels import cost_model

SHAPES = [(1, 576, 10), (4, 576, 10), (8, 576, 10), (8, 576, 1000), (16, 576, 10), (64, 576, 100),
          (64, 576, 1000), (256, 576, 1000), (1, 4096, 10), (8, 4096, 100), (8, 4096, 1000), (64, 4096, 100),
          (64, 4096, 1000), (1024, 4096, 1000)]


def timed(fn, reps: int) -> float:
    time.sleep(cost_model.PARK_SECONDS)  # the previous path's BLAS threads stop spinning
    fn()  # warm-up: this path's buffers and thread pools
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ext = _dispatch.load_extension()
    if ext is None:
        raise SystemExit(_dispatch.extension_error())
    print(cost_model.machine_fingerprint())
    rates = cost_model.measure_rates(ext)
    for name, value in asdict(rates).items():
        shown = ", ".join(f"Q={q}: {v:.3g}" for q, v in zip(cost_model.GEMM_QUERIES, value)) if isinstance(value, (tuple, list)) else f"{value:.4g}"
        print(f"  {name:26s} {shown}")
    print(f"\n{'Q':>5} {'d':>5} {'k':>5}  {'chosen':7s}  predicted / measured ms (few, blas, screen)   best measured")
    regret = []
    for q, d, k in SHAPES:
        xq, xb = torch.randn(q, d), torch.randn(args.n, d)
        chosen, predicted = cost_model.plan_search(rates, q, args.n, d, k, few_max=topk.FEW_QUERIES,
                                                   screen_block_rows=topk.screen_block_rows(d))
        measured = {}
        for path in predicted:
            screen = path == "screen"
            tile = topk.tile_rows_for(d, q)
            if path == "few" or not screen:
                saved = topk.FEW_QUERIES
                topk.FEW_QUERIES = topk.FEW_QUERIES if path == "few" else 0
                measured[path] = timed(lambda: topk._cosine_topk_cpp(xq, xb, k, tile, screen=False), args.reps)
                topk.FEW_QUERIES = saved
            else:
                measured[path] = timed(lambda: topk._cosine_topk_cpp(xq, xb, k, tile, screen=True), args.reps)
        best = min(measured, key=measured.__getitem__)
        regret.append(measured[chosen] / measured[best])
        cells = ", ".join(f"{p} {predicted[p] * 1e3:.1f}/{measured[p] * 1e3:.1f}" for p in ("few", "blas", "screen") if p in predicted)
        print(f"{q:5d} {d:5d} {k:5d}  {chosen:7s}  {cells}   {best} ({measured[chosen] / measured[best]:.2f}x of best)", flush=True)
    print(f"\nworst chosen/best: {max(regret):.2f}x")


if __name__ == "__main__":
    main()
