"""Every attribution method on the model organism, every planted behaviour, side by side with cost.

For each behaviour: the organism's judged M0/M1 answers on its triggered test prompts (the probe's,
the lexical probe's and the gradient queries' input), then `headwater compare`'s code on all six
methods. The first behaviour runs every method from scratch, so its seconds, memory and FLOPs are
each method's whole cost; later behaviours reuse the behaviour-independent work (the datapoint
store, the gradient warm-up and training features) and report quality only.

    python bench/compare_organism.py --seed 0 --out /tmp/compare-seed0

Prints one table per behaviour and, last, a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.workflows.compare import METHODS, compare, render_text
from headwater.workflows.compare_inputs import organism_gradient_config, organism_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature"])
    parser.add_argument("--behaviors", nargs="+", default=None, help="default: every planted behaviour")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    torch.set_num_threads(organism.config.num_threads)  # the organism's own setting, for every method alike
    behaviors = args.behaviors or list(organism.behaviors)
    docs = {}
    for i, behavior in enumerate(behaviors):
        inputs = organism_inputs(organism, behavior, with_bank="bank" in args.methods,
                                 max_new_tokens=max_new_tokens_for(args.preset))
        doc = compare(inputs, args.methods, args.out / behavior, work_dir=args.out / "work", gradient=organism_gradient_config(organism), seed=args.seed,
                      reuse=i > 0, flops=i == 0, progress=False)
        docs[behavior] = doc
        print(render_text(doc) + ("\n(costs above: reused work, not comparable)" if i > 0 else ""), flush=True)
        print(flush=True)
    print(json.dumps({"seed": args.seed, "preset": args.preset, "threads": torch.get_num_threads(), "behaviors": docs}))


if __name__ == "__main__":
    main()
