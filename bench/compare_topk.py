"""Side-by-side timing of exact cosine top-k on the CPU: headwater vs torch and faiss-cpu.

Providers (all start from the same raw fp32 vectors and return the top-k by cosine):

- ``headwater``: ``headwater.kernels.cosine_topk(xq, xb, k)`` with the ``auto`` backend.
- ``torch``: normalise both sides (``F.normalize``), ``xq_hat @ xb_hat.T`` on the full [Q, N]
  matrix, ``torch.topk``.
- ``faiss``: ``faiss.normalize_L2`` on copies, then ``faiss.knn(..., METRIC_INNER_PRODUCT)``
  (exact inner-product search on normalised vectors).
- ``faiss-prenorm``: the same search on vectors normalised beforehand (the normalisation is not
  timed): what faiss costs when the store keeps unit vectors.

Each provider runs its repetitions back to back after an untimed warm-up call, in two rounds
(see ``run_size``); ratios are medians measured in one run (``provider time / headwater time``: above 1 means
headwater is faster). Peak memory is the largest resident-set growth seen by a 1 ms sampling
thread during the call, the inputs excluded. The indices of every provider are checked against
headwater's (agreement up to near-ties is printed).

Usage::

    python bench/compare_topk.py                    # the sizes of bench/RESULTS.md
    python bench/compare_topk.py --sizes 1x200000x576 256x200000x576 --reps 3
    python bench/compare_topk.py --flat             # headwater's peak memory as N grows
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from typing import Callable

import faiss
import numpy as np
import torch

from headwater.kernels import cosine_topk, prepare_keys

DEFAULT_SIZES = [
    "1x200000x576",
    "256x200000x576",
    "1024x200000x576",
    "1x200000x4096",
    "256x200000x4096",
    "1024x200000x4096",
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], object]) -> tuple[float, int, object]:
    """(seconds, peak RSS growth in bytes, result) of one call."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    peak[0] = max(peak[0], rss_bytes())
    return seconds, peak[0] - base, result


def providers(xq: torch.Tensor, xb: torch.Tensor, k: int, prenorm: bool = False) -> dict[str, Callable[[], np.ndarray]]:
    """The providers on raw vectors, or with ``prenorm`` on unit vectors that every provider is
    told are unit already: torch and faiss skip their normalisation, and ``headwater-ready``
    searches keys prepared beforehand (``prepare_keys``: inverse norms and bfloat16 unit rows,
    what a store's search-ready copy holds); plain ``headwater`` still prepares them per call."""
    if prenorm:
        xq_unit, xb_unit = (np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy()) for x in (xq, xb))
        tq, tb = torch.from_numpy(xq_unit), torch.from_numpy(xb_unit)
        ready = prepare_keys(tb)  # made beforehand, untimed, like faiss's unit copies
        return {
            "headwater": lambda: cosine_topk(tq, tb, k)[1].numpy(),
            "headwater-ready": lambda: cosine_topk(tq, ready, k)[1].numpy(),
            "torch": lambda: torch.topk(tq @ tb.T, k, dim=1).indices.numpy(),
            "faiss": lambda: faiss.knn(xq_unit, xb_unit, k, metric=faiss.METRIC_INNER_PRODUCT)[1],
        }
    xq_np, xb_np = xq.numpy(), xb.numpy()
    xb_unit = np.ascontiguousarray(torch.nn.functional.normalize(xb, dim=1).numpy())
    xq_unit = np.ascontiguousarray(torch.nn.functional.normalize(xq, dim=1).numpy())

    def headwater() -> np.ndarray:
        return cosine_topk(xq, xb, k)[1].numpy()

    def torch_full() -> np.ndarray:
        scores = torch.nn.functional.normalize(xq, dim=1) @ torch.nn.functional.normalize(xb, dim=1).T
        return torch.topk(scores, k, dim=1).indices.numpy()

    def faiss_knn() -> np.ndarray:
        q, b = xq_np.copy(), xb_np.copy()
        faiss.normalize_L2(q)
        faiss.normalize_L2(b)
        return faiss.knn(q, b, k, metric=faiss.METRIC_INNER_PRODUCT)[1]

    def faiss_prenorm() -> np.ndarray:
        return faiss.knn(xq_unit, xb_unit, k, metric=faiss.METRIC_INNER_PRODUCT)[1]

    return {"headwater": headwater, "torch": torch_full, "faiss": faiss_knn, "faiss-prenorm": faiss_prenorm}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of (row, slot) positions holding the same index (1.0 = identical)."""
    return float((a == b).mean())


def run_size(q: int, n: int, d: int, k: int, reps: int, seed: int = 0, prenorm: bool = False) -> dict[str, float]:
    """Time every provider on one shape; print the table; return provider -> ratio to headwater."""
    g = torch.Generator().manual_seed(seed)
    xq = torch.randn(q, d, generator=g)
    xb = torch.randn(n, d, generator=g)
    fns = providers(xq, xb, k, prenorm)
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, int] = {name: 0 for name in fns}
    results: dict[str, np.ndarray] = {}
    for name, fn in fns.items():  # first call: the result check
        _, _, results[name] = measure(fn)
    # Each provider runs its calls back to back after one warm-up call, in two rounds so that a
    # drift of the machine reaches every provider. Alternating providers call by call measured
    # the thread pools of the previous library (OpenMP and OpenBLAS threads spin for milliseconds
    # after a parallel region; OpenBLAS's for tens of ms) competing with the next one for the 2
    # cores: that is not what a program that searches repeatedly sees, and it penalised whoever
    # ran second. A pause before each provider lets them park.
    rounds = [reps - reps // 2, reps // 2]
    for count in rounds:
        for name, fn in fns.items():
            if count == 0:
                continue
            time.sleep(0.25)  # the previous library's worker threads stop spinning (OpenBLAS: tens of ms)
            measure(fn)  # warm-up, not timed
            for _ in range(count):
                seconds, peak, _ = measure(fn)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
    ours = statistics.median(times["headwater"])
    print(f"\nQ={q} N={n} d={d} k={k} fp32{' pre-normalised' if prenorm else ''}, {reps} reps (median)")
    print(f"  {'provider':16s} {'time ms':>10s} {'ratio':>7s} {'peak MiB':>9s} {'same idx':>9s}")
    for name in fns:
        t = statistics.median(times[name])
        print(
            f"  {name:16s} {t * 1e3:10.1f} {t / ours:7.2f} {peaks[name] / 2**20:9.1f} "
            f"{agreement(results[name], results['headwater']):9.4f}",
            flush=True,
        )
    ratios = {name: statistics.median(times[name]) / ours for name in fns if not name.startswith("headwater")}
    if "headwater-ready" in times:
        ready = statistics.median(times["headwater-ready"])
        ratios.update({f"{name} vs ready": statistics.median(times[name]) / ready
                       for name in fns if not name.startswith("headwater")})
    return ratios


def cpu_description() -> str:
    """The CPU model and the flags that matter for these kernels (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def run_flat(q: int, d: int, k: int, sizes: list[int]) -> None:
    print(f"\nheadwater peak memory as N grows (Q={q}, d={d}, k={k}, fp32; inputs excluded)")
    for n in sizes:
        xq = torch.randn(q, d)
        xb = torch.randn(n, d)
        seconds, peak, _ = measure(lambda: cosine_topk(xq, xb, k))
        seconds, peak2, _ = measure(lambda: cosine_topk(xq, xb, k))
        print(f"  N={n:8d}  peak {max(peak, peak2) / 2**20:8.1f} MiB  time {seconds * 1e3:8.1f} ms", flush=True)
        xb = None  # free it before the next size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="QxNxd items")
    parser.add_argument("-k", type=int, nargs="+", default=[10], help="k values (each size runs with each)")
    parser.add_argument("--prenorm", action="store_true", help="unit vectors given to every provider as such")
    parser.add_argument("--grid", action="store_true",
                        help="the full grid: k 1 10 100 1000, Q 1 8 64 256 1024, d 576 and 4096 (N = --grid-n), "
                             "raw and pre-normalised; prints the worst ratios")
    parser.add_argument("--grid-n", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--flat", action="store_true", help="only the memory-vs-N sweep")
    args = parser.parse_args()
    print(
        f"{cpu_description()}; {os.cpu_count()} cores; python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )
    if args.flat:
        for q, d in [(256, 576), (64, 4096), (1, 4096)]:  # screened at d = 576 and 4,096; the fused pass
            run_flat(q, d, args.k[0], [25_000, 50_000, 100_000, 200_000, 400_000])
        return
    if args.grid:
        worst: dict[str, tuple[float, str]] = {}
        for prenorm in (False, True):
            for d in (576, 4096):
                for q in (1, 8, 64, 256, 1024):
                    for k in (1, 10, 100, 1000):
                        ratios = run_size(q, args.grid_n, d, k, args.reps, prenorm=prenorm)
                        for name, r in ratios.items():
                            if name not in worst or r < worst[name][0]:
                                worst[name] = (r, f"Q={q} d={d} k={k}{' prenorm' if prenorm else ''}")
        print("\nworst ratio over the grid (provider time / headwater time):")
        for name, (r, where) in worst.items():
            print(f"  {name:22s} {r:6.2f}  at {where}")
        return
    for size in args.sizes:
        q, n, d = (int(x) for x in size.split("x"))
        for k in args.k:
            run_size(q, n, d, k, args.reps, prenorm=args.prenorm)


if __name__ == "__main__":
    main()
