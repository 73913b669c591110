"""GPU check-and-time for the Triton kernels: correctness against float64, then timings.

Run on a CUDA machine from the repository root (after ``pip install --no-deps
--no-build-isolation -e .``)::

    python -m pytest tests/kernels -q          # the same tests, Triton on CUDA tensors
    python bench/gpu_check.py --out "$OUT"     # this script: exactness + timings, log + JSON

What it does:

1. Exactness at scale: Q = 64 bf16 queries against N = 1,000,000 bf16 keys (d = 4096): the Triton
   top-k is compared with a float64 top-k computed from the same bf16 values (chunked); prints
   the fraction of identical indices and the largest score error, and checks every returned score
   against its float64 value.
2. Timings with ``triton.testing.do_bench`` (medians after warm-up), bf16, k = 10:
   - Q = 1024, N = 1,000,000, d = 4096: Triton ``cosine_topk`` vs torch (normalise, bf16 matmul
     on the full [Q, N] matrix, ``topk``), with peak device memory of each;
   - Q = 1, 16, 64: Triton time vs the memory-bandwidth bound N·d·2 bytes / copy bandwidth,
     the copy bandwidth measured here with ``torch.clone`` of the keys.
3. The pooling kernels vs the torch reference (B = 64, T = 512, d = 4096, bf16).

``--small`` runs the same steps at small sizes (a smoke test of the script on any machine; on a
CPU it uses the Triton interpreter and wall-clock timing, whose numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is defined

import torch  # noqa: E402
import triton  # noqa: E402

from headwater.kernels import cosine_topk, masked_mean_pool_diff  # noqa: E402
from headwater.kernels.pooling import masked_mean_pool_diff_reference  # noqa: E402

LOG: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LOG.append(line)


def bench(fn, device) -> float:
    """Median milliseconds."""
    if device.type == "cuda":
        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def peak_memory(fn, device) -> float:
    """Peak device memory in GiB allocated during one call, the inputs excluded."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def topk64(xq: torch.Tensor, xb: torch.Tensor, k: int, chunk: int = 65536):
    """Exact top-k in float64 from the same (bf16) values, over chunks of keys."""
    q = xq.double()
    q = q / q.norm(dim=1, keepdim=True)
    best_s = torch.full((q.shape[0], 0), float("-inf"), dtype=torch.float64, device=q.device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.int64, device=q.device)
    for start in range(0, xb.shape[0], chunk):
        b = xb[start : start + chunk].double()
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
        s = q @ b.T
        s_all = torch.cat([best_s, s], dim=1)
        i_all = torch.cat([best_i, torch.arange(start, start + b.shape[0], device=q.device).expand(q.shape[0], -1)], dim=1)
        best_s, pos = torch.topk(s_all, k, dim=1)
        best_i = i_all.gather(1, pos)
    return best_s, best_i


def score64(xq: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    q = xq.double()
    q = q / q.norm(dim=1, keepdim=True)
    b = xb[idx.clamp_min(0)].double()  # [Q, k, d]
    b = b / b.norm(dim=2, keepdim=True)
    return torch.einsum("qd,qkd->qk", q, b)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    say(f"device {name}; torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}")
    n_big, d, k = (4_096, 64, 10) if args.small else (1_000_000, 4096, 10)
    q_big = 32 if args.small else 1024
    results: dict[str, object] = {"device": name, "torch": torch.__version__, "triton": triton.__version__}
    g = torch.Generator(device=device).manual_seed(0)
    xb = torch.randn(n_big, d, device=device, generator=g, dtype=torch.float32).to(torch.bfloat16)
    ok = True

    # 1. exactness against float64
    xq = torch.randn(16 if args.small else 64, d, device=device, generator=g).to(torch.bfloat16)
    D, I = cosine_topk(xq, xb, k, backend="triton")
    S64, I64 = topk64(xq, xb, k)
    same = float((I == I64).float().mean())
    err = float((score64(xq, xb, I) - D.double()).abs().max())
    kth_gap = float((S64[:, -1] - score64(xq, xb, I)[:, -1]).abs().max())
    say(f"exactness Q={xq.shape[0]} N={n_big} d={d} bf16: identical indices {same:.4f}, max |score - float64| {err:.2e}, k-th score gap {kth_gap:.2e}")
    results["exactness"] = {"identical_indices": same, "max_score_error": err, "kth_gap": kth_gap}
    ok &= err < 1e-4 and kth_gap < 1e-4

    # 2a. Q = 1024 vs torch
    xq = torch.randn(q_big, d, device=device, generator=g).to(torch.bfloat16)

    def run_triton():
        return cosine_topk(xq, xb, k, backend="triton")

    def run_torch():
        s = torch.nn.functional.normalize(xq, dim=1) @ torch.nn.functional.normalize(xb, dim=1).T
        return torch.topk(s, k, dim=1)

    t_tri, t_tor = bench(run_triton, device), bench(run_torch, device)
    m_tri, m_tor = peak_memory(run_triton, device), peak_memory(run_torch, device)
    flops = 2 * q_big * n_big * d
    say(
        f"Q={q_big} N={n_big} d={d} bf16 k={k}: triton {t_tri:.2f} ms ({flops / t_tri / 1e9:.0f} TFLOP/s, "
        f"peak {m_tri:.2f} GiB), torch matmul+topk {t_tor:.2f} ms (peak {m_tor:.2f} GiB), torch/triton = {t_tor / t_tri:.2f}"
    )
    results["large_q"] = {"triton_ms": t_tri, "torch_ms": t_tor, "triton_peak_gib": m_tri, "torch_peak_gib": m_tor}

    # 2b. small Q vs the bandwidth bound
    t_copy = bench(lambda: xb.clone(), device)
    bandwidth = 2 * xb.numel() * 2 / (t_copy * 1e-3)  # bytes/s, read + write
    say(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    results["small_q"] = {}
    for q in (1, 16, 64):
        xq_small = torch.randn(q, d, device=device, generator=g).to(torch.bfloat16)
        t = bench(lambda: cosine_topk(xq_small, xb, k, backend="triton"), device)
        bound = xb.numel() * 2 / bandwidth * 1e3
        say(f"Q={q}: triton {t:.3f} ms, bandwidth bound {bound:.3f} ms, {bound / t:.0%} of the bound")
        results["small_q"][q] = {"triton_ms": t, "bound_ms": bound}

    # 3. pooling
    b, t_len = (4, 64) if args.small else (64, 512)
    hidden = torch.randn(2 * b, t_len, d, device=device, generator=g).to(torch.bfloat16)
    mask = torch.rand(2 * b, t_len, device=device, generator=g) < 0.5
    mask[:, 0] = True
    fused = masked_mean_pool_diff(hidden[:b], mask[:b], hidden[b:], mask[b:], backend="triton")
    ref = masked_mean_pool_diff_reference(hidden[:b], mask[:b], hidden[b:], mask[b:])
    pool_err = float((fused - ref).abs().max())
    t_fused = bench(lambda: masked_mean_pool_diff(hidden[:b], mask[:b], hidden[b:], mask[b:], backend="triton"), device)
    t_ref = bench(lambda: masked_mean_pool_diff(hidden[:b], mask[:b], hidden[b:], mask[b:], backend="torch"), device)
    say(f"pool diff B={b} T={t_len} d={d} bf16: max |triton - torch| {pool_err:.2e}; triton {t_fused:.3f} ms, torch {t_ref:.3f} ms")
    results["pool_diff"] = {"max_error": pool_err, "triton_ms": t_fused, "torch_ms": t_ref}
    ok &= pool_err < 1e-3

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.log"), "w") as f:
        f.write("\n".join(LOG) + "\n")
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    say("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
