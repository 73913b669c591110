"""Where `Engine.encode_pairs` spends its time: pairs/s of each prompt-sharing mode, then a
torch.profiler table of the ops over a few batches.

The pairs are `bench_encode.py`'s synthetic ones, batched as the engine batches them; the
forward functions are the engine's own (`headwater.engine.pair_forward.FORWARDS`), so the figures are
the engine's compute without tokenisation and shard writes.

    python bench/profile_encode.py --threads 2                  # packed rows (the default mode)
    python bench/profile_encode.py --threads 2 --mode kv_cache
    python bench/profile_encode.py --threads 2 --compile        # also time torch.compile'd blocks
    python bench/profile_encode.py --threads 2 --untuned-allocator --whole-row-attention --profile-batches 0
                                                                # without the engine's two CPU measures

`--untuned-allocator` builds the engine with ``tune_allocator=False`` (glibc's malloc defaults;
the setting is process-wide, so compare fresh processes); `--whole-row-attention` runs packed
rows through plain sdpa instead of query chunks (it swaps ``headwater.engine.pair_forward``'s chunking
context for a no-op). `--profile-batches 0` prints the pairs/s only.

`--compile` compiles blocks 1..ℓ with `torch.compile(dynamic=True)` after the eager timing and
reports the compile time, the compiled pairs/s and the smallest cosine against the eager vectors.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import load, synthetic_pairs  # noqa: E402

import headwater.engine.pair_forward as pairs_module  # noqa: E402
from headwater.engine import Engine  # noqa: E402
from headwater.engine.models import decoder_blocks  # noqa: E402
from headwater.engine.pair_forward import FORWARDS, MODES, pair_batches  # noqa: E402
from headwater.engine.tokenization import TokenizationSettings, encode_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--mode", choices=MODES, default="packed")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile-batches", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd decoder blocks")
    parser.add_argument("--untuned-allocator", action="store_true", help="Engine(tune_allocator=False)")
    parser.add_argument("--whole-row-attention", action="store_true",
                        help="plain sdpa over whole packed rows instead of query chunks")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer, described = load(args.model, args.dtype)
    engine = Engine(model, tokenizer, max_tokens_per_batch=args.max_tokens_per_batch,
                    share_prompt=False if args.mode == "separate" else args.mode,
                    tune_allocator=not args.untuned_allocator)
    if args.whole_row_attention:
        pairs_module.chunked_causal_attention = lambda model: contextlib.nullcontext()
    encoded = [encode_pair(tokenizer, p, TokenizationSettings()) for p in synthetic_pairs(args.pairs)]
    lengths = ([c.prompt_length for c, _ in encoded], [c.response_length for c, _ in encoded],
               [r.response_length for _, r in encoded])
    batches = list(pair_batches(*lengths, args.max_tokens_per_batch, mode=args.mode))
    forward = FORWARDS[args.mode]

    def run(selected: list[list[int]]) -> torch.Tensor:
        return torch.cat([forward(engine.model, [encoded[i] for i in b], engine.layer,
                                  pad_token_id=engine.pad_token_id) for b in selected])

    print(f"{described}, {args.dtype}, layer {engine.layer}, mode {args.mode}, {len(encoded)} pairs in "
          f"{len(batches)} batches, {torch.get_num_threads()} threads, allocator "
          f"{'untuned' if args.untuned_allocator else 'tuned'}, attention "
          f"{'whole rows' if args.whole_row_attention else 'query chunks'}")
    if args.mode == "packed":  # one row of prompt + chosen + rejected per pair
        widths = [sum(lengths[k][i] for k in range(3)) for i in range(len(encoded))]
        padded = sum(max(widths[i] for i in b) * len(b) for b in batches)
        print(f"padding: {padded} token slots for {sum(widths)} tokens ({padded / sum(widths) - 1:.1%} waste)")
    run(batches[:1])  # warm-up
    start = time.perf_counter()
    eager = run(batches)
    seconds = time.perf_counter() - start
    print(f"eager: {len(encoded) / seconds:.2f} pairs/s ({seconds:.1f} s)")

    if args.profile_batches > 0:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(batches[: args.profile_batches])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    if args.compile:
        start = time.perf_counter()
        for block in list(decoder_blocks(engine.model))[: engine.layer]:
            block.compile(dynamic=True)
        run(batches)  # compiles, and recompiles for the shapes it meets
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        compiled = run(batches)
        seconds_c = time.perf_counter() - start
        cosine = torch.nn.functional.cosine_similarity(compiled.double(), eager.double(), dim=1).min().item()
        print(f"compiled: first pass (with compilation) {compile_seconds:.1f} s; then "
              f"{len(encoded) / seconds_c:.2f} pairs/s ({seconds / seconds_c:.2f}x eager); "
              f"min cosine vs eager {cosine:.6f}")


if __name__ == "__main__":
    main()
