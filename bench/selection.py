"""Top-k selection on score tiles: torch.topk (plus the tie fix of the torch backend) vs the C++
heap merge of ``headwater._C``, on the same tiles.

    python bench/selection.py

Both consume [Q, n] float32 score tiles (raw dot products and per-column inverse norms) for
N keys in tiles of n and keep a running top-k; the providers alternate in every repetition.
"""
from __future__ import annotations

import statistics
import time

import torch

from headwater.kernels import _dispatch
from headwater.kernels.topk import _tile_topk_torch
from headwater.kernels.topk_merge import empty_result, merge_topk


def main(q: int = 256, n_total: int = 200_000, tile: int = 16_384, k: int = 10) -> None:
    ext = _dispatch.load_extension()
    if ext is None:
        raise SystemExit(_dispatch.extension_error())
    g = torch.Generator().manual_seed(0)
    tiles = [(torch.randn(q, min(tile, n_total - o), generator=g), o) for o in range(0, n_total, tile)]
    invs = [torch.rand(t.shape[1], generator=g) + 0.5 for t, _ in tiles]

    def with_torch():
        run_s, run_i = empty_result(q, k, torch.device("cpu"))
        for (raw, offset), inv in zip(tiles, invs):
            new_s, new_i = _tile_topk_torch(raw * inv, offset, k)
            run_s, run_i = merge_topk(run_s, run_i, new_s, new_i, k)
        return run_i

    def with_cpp():
        heap_s, heap_i = empty_result(q, k, torch.device("cpu"))
        for (raw, offset), inv in zip(tiles, invs):
            ext.topk_merge_tile(raw.numpy(), inv.numpy(), offset, heap_s.numpy(), heap_i.numpy())
        ext.topk_sort_rows(heap_s.numpy(), heap_i.numpy())
        return heap_i

    assert torch.equal(with_torch(), with_cpp()), "the two selections disagree"
    times: dict[str, list[float]] = {"torch.topk": [], "C++ heap": []}
    for _ in range(5):
        for name, fn in (("torch.topk", with_torch), ("C++ heap", with_cpp)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    cpp = statistics.median(times["C++ heap"])
    print(f"Q={q} N={n_total} tiles of {tile} k={k}: identical indices")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"  {name:10s} {t * 1e3:8.1f} ms  ratio {t / cpp:5.2f}  ({q * n_total / t / 1e6:.0f} M scores/s)")


if __name__ == "__main__":
    main()
