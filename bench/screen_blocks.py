"""Side by side in one process: the screened bf16 path of ``cosine_topk`` with its blocks sized as
before (8·k rows, 16-64 MiB of bf16 unit rows) and as now (``screen_block_rows``: up to 16,384
rows / 128 MiB), on raw keys converted inside the call ("plain") and on ``prepare_keys`` copies
("ready"). Medians in milliseconds, each shape's two sizes alternating over two rounds.

    python bench/screen_blocks.py
    python bench/screen_blocks.py --shapes 64x4096x1000 8x4096x10 --n 50000 --reps 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from headwater.kernels import cosine_topk, prepare_keys
from headwater.kernels import topk as topk_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_ceiling import cpu_model  # noqa: E402

SHAPES = ["8x4096x1000", "64x4096x100", "64x4096x1000", "256x4096x100", "256x4096x1000", "1024x4096x1000",
          "8x4096x10", "64x576x1000", "256x576x100"]


def before_rows(d: int, k: int) -> int:
    """The block rows before the change: 8·k rows, at least 16 MiB and at most 64 MiB of bf16."""
    return max(256, (16 << 20) // (2 * d), min(8 * k, 16384, (64 << 20) // (2 * d)))


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="QxdxK items")
    parser.add_argument("--n", type=int, default=50_000, help="keys")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"{cpu_model()}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{'Q':>5} {'d':>5} {'k':>5}  before: plain / ready (rows)   now: plain / ready (rows)")
    now = topk_module.screen_block_rows
    topk_module.SCREEN = True  # the screened path at every shape, as the comparison is about it
    try:
        for shape in args.shapes:
            q, d, k = (int(v) for v in shape.split("x"))
            g = torch.Generator().manual_seed(0)
            xq = torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=1)
            xb = torch.nn.functional.normalize(torch.randn(args.n, d, generator=g), dim=1)
            ready = prepare_keys(xb)
            best: dict[str, list[float]] = {}
            for _ in range(2):
                for name, rows in (("before", lambda d_, k=k: before_rows(d_, k)), ("now", now)):
                    topk_module.screen_block_rows = rows
                    time.sleep(0.2)
                    best.setdefault(name + " plain", []).append(median_ms(lambda: cosine_topk(xq, xb, k), args.reps))
                    best.setdefault(name + " ready", []).append(median_ms(lambda: cosine_topk(xq, ready, k), args.reps))
            topk_module.screen_block_rows = now
            cell = {key: min(v) for key, v in best.items()}
            print(f"{q:>5} {d:>5} {k:>5}  {cell['before plain']:8.1f} / {cell['before ready']:8.1f} ({before_rows(d, k)})"
                  f"   {cell['now plain']:8.1f} / {cell['now ready']:8.1f} ({now(d)})", flush=True)
    finally:
        topk_module.screen_block_rows = now
        topk_module.SCREEN = None


if __name__ == "__main__":
    main()
