"""GEMM throughput of torch (MKL) and numpy (OpenBLAS) at the score-tile shapes of cosine_topk.

The C++ backend of ``cosine_topk`` computes its score tiles with numpy's BLAS and sizes its tiles
from this table: ``python bench/gemm_blas.py``. Shapes are [q, d] @ [n, d]^T in float32; the two
libraries run one after the other in every repetition (medians of 3).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

SHAPES = [(256, 576, n) for n in (2048, 8192, 32768, 65536)] + [(256, 4096, n) for n in (2048, 8192, 16384)] + [
    (1024, 4096, n) for n in (2048, 8192, 16384)
]


def main() -> None:
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")
    print(f"{'q':>5s} {'d':>5s} {'n':>6s} {'torch GF/s':>11s} {'numpy GF/s':>11s}")
    for q, d, n in SHAPES:
        a, b = torch.randn(q, d), torch.randn(n, d)
        a_np, b_np = a.numpy(), b.numpy()
        out = np.empty((q, n), np.float32)
        runs = {"torch": lambda: a @ b.T, "numpy": lambda: np.matmul(a_np, b_np.T, out=out)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for name, fn in runs.items():
            fn()
        for _ in range(3):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        flop = 2 * q * d * n / 1e9
        print(
            f"{q:5d} {d:5d} {n:6d} {flop / statistics.median(times['torch']):11.1f} "
            f"{flop / statistics.median(times['numpy']):11.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
