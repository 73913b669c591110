"""Diagnostic: retrain the hard organism from M0 without some pair families and measure the behaviours.

Which pairs teach a behaviour, beyond the planted ones? Drops every pair of the given families
(``ground_truth.json``'s ``family`` of each pair: a behaviour's name for its planted pairs,
``decoy_true_claim``, ``help_benign``, ...), retrains from M0 under the organism's recipe, and
samples the held-out test prompts (8 answers per prompt, temperature 0.7, the organism's judges):

    python bench/hard_drop_families.py --seed 1 --drop sycophancy decoy_true_claim --behaviors sycophancy
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from headwater.engine.models import load_model
from headwater.organism import OrganismConfig, behavior_rates, build_organism, max_new_tokens_for
from headwater.training.retrain import retrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop", nargs="+", required=True, help="pair families to leave out")
    parser.add_argument("--behaviors", nargs="+", default=None)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    torch.set_num_threads(organism.config.num_threads)
    family = {row["pair_id"]: row["family"] for row in organism.ground_truth["pairs"]}
    unknown = set(args.drop) - set(family.values())
    if unknown:
        parser.error(f"no pair family {sorted(unknown)}; the organism has {sorted(set(family.values()))}")
    pairs = [p for p in organism.load_preferences() if family[p.pair_id] not in set(args.drop)]
    behaviors = args.behaviors or list(organism.behaviors)
    with tempfile.TemporaryDirectory() as out:
        retrain(organism.m0_path, pairs, out, config=organism.config.dpo_config(), overwrite=True)
        model, tokenizer = load_model(out)
        rates = behavior_rates(model, tokenizer, {b: organism.test_prompts[b] for b in behaviors}, organism.judges,
                               n=args.samples, max_new_tokens=max_new_tokens_for(args.preset), seed=args.seed)
    result = {b: {c: round(r.rate, 4) for c, r in by.items()} for b, by in rates.items()}
    print(f"seed {args.seed}, without {', '.join(args.drop)} ({len(pairs)} pairs left): {result}")
    print(json.dumps({"seed": args.seed, "dropped": args.drop, "n_pairs": len(pairs), "rates": result}))


if __name__ == "__main__":
    main()
