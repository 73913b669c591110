"""The fastest the engine could run on this machine if only its linear layers cost time.

Times ``torch.nn.functional.linear`` at the engine's batch shape ([tokens, d] bf16 against each
of a Llama-style block's seven weight matrices: q, k, v, o, gate, up, down) and turns the rate
into a ceiling on pairs/s: the linear layers of blocks 1..ℓ over the average packed pair
(prompt + chosen + rejected tokens), with attention, norms, rotary, SwiGLU and padding free.
Divided by the reference recipe's pairs/s (``bench_encode.py``), it bounds the engine's ratio.

    python bench/linear_ceiling.py --threads 2                      # SmolLM2-135M, layer 19
    python bench/linear_ceiling.py --threads 2 --tokens 1024 2048 4096 8192

It also measures the machine's bfloat16 GEMM rate: the best of square products (``--gemm-size``,
default 2048 and 4096) and of the layer shapes above, and prints each rate as a share of it
(FLOP utilisation). Pass the same figure to ``bench_encode.py --peak-tflops`` to place the engine
and the reference recipe against the machine.

Defaults are SmolLM2-135M's shapes (d 576, 9 heads / 3 KV heads of 64, SwiGLU 1536, ℓ = 19) and
the 139.4 tokens of ``bench_encode.py``'s average packed pair. The malloc thresholds are raised
as the engine raises them.
"""
from __future__ import annotations

import argparse
import time

import torch

from headwater.engine.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--q-width", type=int, default=576, help="heads × head_dim")
    parser.add_argument("--kv-width", type=int, default=192, help="KV heads × head_dim")
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--layer", type=int, default=19, help="blocks the engine runs")
    parser.add_argument("--tokens-per-pair", type=float, default=139.4, help="p + c + r of the average pair")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192], help="rows of one batch")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gemm-size", type=int, nargs="+", default=[2048, 4096],
                        help="sides of the square bf16 GEMMs timed for the machine's rate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    d, i = args.hidden, args.intermediate
    shapes = {"q": (args.q_width, d), "k": (args.kv_width, d), "v": (args.kv_width, d), "o": (d, args.q_width),
              "gate": (i, d), "up": (i, d), "down": (d, i)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16; CPU: {cpu_model()}")
    squares = {size: square_gemm_rate(size, args.reps) for size in args.gemm_size}
    print("square bf16 GEMMs: " + ", ".join(f"{size}^3 {rate / 1e9:.0f} GFLOP/s" for size, rate in squares.items()))
    results = []
    for n in args.tokens:
        block_seconds = block_flops = 0.0
        rates = []
        for name, (out_features, in_features) in shapes.items():
            x = torch.randn(n, in_features, dtype=torch.bfloat16)
            weight = torch.randn(out_features, in_features, dtype=torch.bfloat16)
            for _ in range(3):  # warm-up
                torch.nn.functional.linear(x, weight)
            start = time.perf_counter()
            for _ in range(args.reps):
                torch.nn.functional.linear(x, weight)
            seconds = (time.perf_counter() - start) / args.reps
            flops = 2.0 * n * out_features * in_features
            block_seconds += seconds
            block_flops += flops
            rates.append(flops / seconds)
        per_pair = block_seconds / n * args.tokens_per_pair * args.layer
        results.append((n, block_flops / block_seconds, rates, per_pair))
    peak = max([*squares.values(), *(max(per_matrix) for _, _, per_matrix, _ in results)])
    print(f"machine bf16 GEMM rate (best measured above): {peak / 1e9:.0f} GFLOP/s")
    for n, rate, per_matrix, per_pair in results:
        shown = ", ".join(f"{name} {value / 1e9:.0f}" for name, value in zip(shapes, per_matrix))
        print(f"{n} tokens: {rate / 1e9:.0f} GFLOP/s over one block ({100 * rate / peak:.0f}% of the machine's "
              f"bf16 GEMM rate; {shown}); linear layers of {args.layer} blocks: "
              f"{per_pair * 1e3:.1f} ms a pair, ceiling {1 / per_pair:.2f} pairs/s")


def square_gemm_rate(size: int, reps: int) -> float:
    """FLOP/s of a [size, size] x [size, size] bfloat16 matmul (best of ``reps`` after a warm-up)."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(max(3, reps // 2)):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
