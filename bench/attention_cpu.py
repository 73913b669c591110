"""Attention over the engine's packed rows on the CPU: whole rows against query chunks and the
other ways tried.

For the first batches of ``bench_encode.py``'s pairs, packed and batched as the engine does
(SmolLM2's tokenizer and 8,192-token budget), random bf16 queries, keys and values of SmolLM2's
shape (9 heads, 3 KV heads, head dim 64) go through:

- ``mask``: ``scaled_dot_product_attention`` with the packed 4-D mask over whole rows (what
  transformers' sdpa does);
- ``chunks-N``: the same in query chunks of N rows, each against the keys up to its end (what
  ``headwater.engine.attention`` does, N = 64);
- ``is_causal``: whole rows with ``is_causal=True`` and no mask (wrong for packed rows; a bound
  on what the kernel's own causal skipping buys);
- ``math``: bf16 ``matmul`` of queries and keys, float32 softmax with the mask, ``matmul`` by
  the values.

Prints the cumulative milliseconds of each (one layer's attention for those batches).

    python bench/attention_cpu.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import synthetic_pairs  # noqa: E402

from headwater.engine.allocator import keep_freed_memory  # noqa: E402
from headwater.engine.models import smollm2_path  # noqa: E402
from headwater.engine.pair_forward import pair_batches  # noqa: E402
from headwater.engine.tokenization import TokenizationSettings, encode_pair  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def packed_mask(lengths: list[tuple[int, int, int]]) -> torch.Tensor:
    """[B, 1, T, T] bool: causal, rejected tokens blind to chosen ones (engine.pairs' packed mask)."""
    width = max(p + c + r for p, c, r in lengths)
    column = torch.arange(width)[None]
    p = torch.tensor([x[0] for x in lengths])[:, None]
    chosen_end = p + torch.tensor([x[1] for x in lengths])[:, None]
    rejected_end = chosen_end + torch.tensor([x[2] for x in lengths])[:, None]
    in_chosen = (column >= p) & (column < chosen_end)
    in_rejected = (column >= chosen_end) & (column < rejected_end)
    causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
    return (causal & ~(in_rejected[:, :, None] & in_chosen[:, None, :]))[:, None]


def chunked(q, k, v, mask, rows):
    width = q.shape[2]
    out = [F.scaled_dot_product_attention(q[:, :, a : a + rows], k[:, :, : a + rows], v[:, :, : a + rows],
                                          attn_mask=mask[:, :, a : a + rows, : a + rows], enable_gqa=True)
           for a in range(0, width, rows)]
    return torch.cat(out, dim=2)


def math(q, k, v, mask):
    k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(HEAD_DIM**-0.5)
    scores.masked_fill_(~mask, float("-inf"))
    return torch.softmax(scores, -1).to(q.dtype) @ v


def timed(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    encoded = [encode_pair(tokenizer, p, TokenizationSettings()) for p in synthetic_pairs(args.pairs)]
    lengths = [(c.prompt_length, c.response_length, r.response_length) for c, r in encoded]
    batches = list(pair_batches(*zip(*lengths), args.max_tokens_per_batch, mode="packed"))[: args.batches]
    torch.manual_seed(0)
    totals: dict[str, float] = {}
    for batch in batches:
        mask = packed_mask([lengths[i] for i in batch])
        n, width = len(batch), mask.shape[-1]
        q = torch.randn(n, HEADS, width, HEAD_DIM, dtype=torch.bfloat16)
        k, v = (torch.randn(n, KV_HEADS, width, HEAD_DIM, dtype=torch.bfloat16) for _ in range(2))
        whole = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        ways = {"mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
                "is_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                "math": lambda: math(q, k, v, mask)}
        for rows in args.chunks:
            ways[f"chunks-{rows}"] = lambda rows=rows: chunked(q, k, v, mask, rows)
            assert (chunked(q, k, v, mask, rows) - whole).abs().max() < 2e-2  # bf16: the same attention
        for name, fn in ways.items():
            totals[name] = totals.get(name, 0.0) + timed(fn, args.reps)
        print(f"batch of {n} rows × {width}: " + ", ".join(f"{k} {1e3 * t:.1f}" for k, t in totals.items()) + " ms",
              flush=True)
    base = totals["mask"]
    print("relative to whole rows with the mask: " + ", ".join(f"{k} {t / base:.2f}" for k, t in totals.items()))


if __name__ == "__main__":
    main()
