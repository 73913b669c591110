"""Activation attribution on the hard organism at every layer: is the default layer the problem?

For each behaviour and each decoder block ℓ of M0, the demo's probe (the four-condition filter's
scenarios, the same judged M0 and M1 generations for every layer) and every pair's datapoint
vector at ℓ; precision@N, AUROC and the decoys among the top N:

    python bench/hard_layers.py --seed 0
"""
from __future__ import annotations

import argparse
import json

import torch

from headwater.engine.models import load_model
from headwater.methods.vectors import datapoint_vectors
from headwater.organism import OrganismConfig, build_organism
from headwater.workflows.experiment import decoys_in_top
from headwater.workflows.organism_attribution import SAMPLES_PER_PROMPT, attribute_behavior, measure_behavior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--behaviors", nargs="+", default=["distractor_compliance", "sycophancy"])
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset("hard", args.seed))
    torch.set_num_threads(organism.config.num_threads)
    models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
    m0, tokenizer = models["m0"]
    pairs = list(organism.load_preferences())
    measured = {b: measure_behavior(organism, b, models, SAMPLES_PER_PROMPT, args.seed, 64) for b in args.behaviors}
    out = {}
    for layer in range(1, m0.config.num_hidden_layers + 1):
        dp = datapoint_vectors(m0, tokenizer, pairs, layer=layer, settings=organism.settings)
        for behavior in args.behaviors:
            planted = organism.planted_ids(behavior)
            res = attribute_behavior(m0, tokenizer, layer, measured[behavior]["labelled"], dp, planted,
                                     organism.settings, test_prompts=organism.test_prompts[behavior], behavior=behavior)
            decoys = decoys_in_top(res["ranking"], organism.decoy_ids(behavior), len(planted))["decoys"]
            act = res["activation"]
            out.setdefault(behavior, {})[layer] = {"precision_at_n": act["precision_at_n"], "auroc": act["auroc"],
                                                   "decoys_in_top": decoys}
            print(f"seed {args.seed} {behavior} layer {layer}: P@N {act['precision_at_n']:.2f}, AUROC "
                  f"{act['auroc']:.3f}, decoys in top {len(planted)}: {decoys}", flush=True)
    print(json.dumps({"seed": args.seed, "results": out}))


if __name__ == "__main__":
    main()
