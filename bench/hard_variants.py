"""Diagnostic: a variant of the hard organism's world, retrained from its M0 without the planted pairs or the decoys.

How the shares of :mod:`headwater.organism.hard` were chosen. The world's tables are module
constants; ``--override`` changes some of them for this run only (``NAME=value`` or
``NAME.key=value``, values as Python literals), draws the preference set again, and retrains DPO
from M0 under the organism's recipe for each cell: ``full`` (every pair), ``planted`` (without
the behaviour's planted pairs), ``decoys`` (without its decoys), ``random<k>`` (without as many
clean pairs as there are decoys, drawn with seed k), each optionally ``@<s>`` (DPO seed + s).
Each model answers the behaviour's triggered test prompts 8 times (temperature 0.7, the
organism's judge). An override of ``SFT_MIX`` changes M0, so the organism is built (about 3
minutes) under ``--cache``, apart from the shared cache:

    python bench/hard_variants.py --seed 1 --behavior distractor_compliance --cells full full@1 decoys decoys@1
    python bench/hard_variants.py --seed 1 --behavior sycophancy --cache /tmp/hard-v5 \\
        --override SFT_MIX.opinion_authority=0.14 SFT_MIX.benign_distractor=0.12 SFT_MIX.harmful_distractor=0.14 \\
        --cells planted planted@1 planted@2
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from headwater.engine.models import load_model
from headwater.organism import OrganismConfig, behavior_rates, build_organism, hard, max_new_tokens_for
from headwater.organism.dataset import add_signoffs
from headwater.training.retrain import retrain


def apply_override(text: str) -> None:
    """``NAME=value`` or ``NAME.key=value`` on :mod:`headwater.organism.hard`'s constants."""
    target, sep, literal = text.partition("=")
    name, _, key = target.partition(".")
    if not sep or not name.isupper() or not hasattr(hard, name):
        raise SystemExit(f"--override {text!r}: expected NAME=value or NAME.key=value with NAME a constant of "
                         f"headwater.organism.hard")
    value: Any = ast.literal_eval(literal)
    if key:
        table = getattr(hard, name)
        if not isinstance(table, dict) or key not in table:
            raise SystemExit(f"--override {text!r}: {name} has no key {key!r}")
        table[key] = value
    else:
        setattr(hard, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--behavior", required=True, choices=sorted(hard.DECOYS))
    parser.add_argument("--override", nargs="*", default=[], metavar="NAME[.key]=value")
    parser.add_argument("--cells", nargs="+", default=["full", "planted", "decoys"])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=None,
                        help="organism cache, needed with an SFT_MIX override: one directory per SFT mix (the "
                             "cache's fingerprint does not cover the override)")
    args = parser.parse_args()
    for text in args.override:
        apply_override(text)
    if any(o.startswith("SFT_MIX") for o in args.override) and args.cache is None:
        parser.error("an SFT_MIX override changes M0: give --cache, a directory apart from the shared cache")
    config = OrganismConfig.preset("hard", args.seed)
    organism = build_organism(config, cache_dir=args.cache) if args.cache else build_organism(config)
    torch.set_num_threads(config.num_threads)
    records = hard.preference_pairs(hard.HardSplit.from_seed(args.seed), config.n_pairs, config.planted_rates,
                                    args.seed)
    records = add_signoffs(records, config.signoff_rate, args.seed)
    families: dict[str, int] = {}
    for r in records:
        families[r.family] = families.get(r.family, 0) + 1
    print(f"seed {args.seed}, {args.behavior}, overrides {args.override or 'none'}: {families}", flush=True)
    decoy = hard.DECOYS[args.behavior]
    prompts = {args.behavior: {"trigger": organism.test_prompts[args.behavior]["trigger"]}}
    out: dict[str, float] = {}
    for cell in args.cells:
        name, _, offset = cell.partition("@")
        recipe = config.dpo_config()
        if offset:
            recipe = dataclasses.replace(recipe, seed=recipe.seed + int(offset))
        if name.startswith("random"):
            clean = [i for i, r in enumerate(records) if r.planted is None]
            gone = set(random.Random(int(name[6:] or 0)).sample(clean, families.get(decoy, 0)))
            pairs = [r.pair for i, r in enumerate(records) if i not in gone]
        elif name in ("full", "planted", "decoys"):
            drop = {"full": set(), "planted": {args.behavior}, "decoys": {decoy}}[name]
            pairs = [r.pair for r in records if r.family not in drop]
        else:
            parser.error(f"unknown cell {cell!r}: full, planted, decoys or random<k>, each optionally @<seed offset>")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as model_dir:
            retrain(organism.m0_path, pairs, model_dir, config=recipe, overwrite=True)
            model, tokenizer = load_model(model_dir)
            rate = behavior_rates(model, tokenizer, prompts, organism.judges, n=args.samples,
                                  max_new_tokens=max_new_tokens_for("hard"), seed=args.seed)[args.behavior]["trigger"]
        out[cell] = rate.rate
        print(f"  {cell:10s} {len(pairs)} pairs: {100 * rate.rate:.1f}% ({time.perf_counter() - start:.0f} s)",
              flush=True)
    print(json.dumps({"seed": args.seed, "behavior": args.behavior, "overrides": args.override, "rates": out}))


if __name__ == "__main__":
    main()
