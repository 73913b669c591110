"""Build an organism and print its behaviour rates: ``python -m headwater.organism --help``."""
from __future__ import annotations

import argparse
import json
import time

import torch

from headwater.engine import atomic
from headwater.organism.build import OrganismConfig, build_organism
from headwater.organism.rates import behavior_rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", choices=("default", "miniature"), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="cache root (default $HEADWATER_CACHE or ~/.cache/headwater)")
    parser.add_argument("--rebuild", action="store_true", help="build even when a cached copy exists")
    parser.add_argument("--samples", type=int, default=4, help="responses per test prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    config = getattr(OrganismConfig, args.config)(seed=args.seed)
    torch.set_num_threads(config.num_threads)  # sampling, like training, is fastest on one thread here
    start = time.perf_counter()
    organism = build_organism(config, cache_dir=args.cache_dir, rebuild=args.rebuild)
    build_seconds = time.perf_counter() - start
    tokenizer = organism.load_tokenizer()
    result = {"organism": str(organism.root), "build_seconds": round(build_seconds, 1), "rates": {}}
    for which in ("m0", "m1"):
        rates = behavior_rates(
            organism.load_model(which), tokenizer, organism.test_prompts, organism.judges, n=args.samples,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
        )
        result["rates"][which] = {b: {c: round(r.rate, 3) for c, r in conds.items()} for b, conds in rates.items()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        atomic.write_text(args.json, text + "\n")


if __name__ == "__main__":
    main()
