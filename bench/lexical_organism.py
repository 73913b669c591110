"""Activation probe against the lexical (TF-IDF) baseline on the model organism, side by side.

Both rankings use the same judged generations (the demo's: M0 and M1 on each behaviour's
triggered test prompts) and the same pairs; precision@N and AUROC against the planted ground
truth (N = the planted count), with the wall time of each ranking.

    python bench/lexical_organism.py --seed 0
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from headwater.baselines.lexical import lexical_ranking
from headwater.engine.models import load_model, resolve_layer
from headwater.methods.attribution import evaluate_ranking
from headwater.methods.vectors import datapoint_vectors
from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.workflows.organism_attribution import SAMPLES_PER_PROMPT, attribute_behavior, measure_behavior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature"])
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    torch.set_num_threads(organism.config.num_threads)
    models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
    m0, tok = models["m0"]
    layer = resolve_layer(m0, None)
    pairs = list(organism.load_preferences())
    start = time.perf_counter()
    dp = datapoint_vectors(m0, tok, pairs, layer=layer, settings=organism.settings)
    encode_seconds = time.perf_counter() - start
    rows = []
    for behavior in organism.behaviors:
        measured = measure_behavior(organism, behavior, models, SAMPLES_PER_PROMPT, args.seed, max_new_tokens_for(args.preset))
        planted = organism.planted_ids(behavior)
        start = time.perf_counter()
        activation = attribute_behavior(m0, tok, layer, measured["labelled"], dp, planted, organism.settings)
        activation_seconds = time.perf_counter() - start + encode_seconds
        p, r, lab = [], [], []
        for model_name in ("m0", "m1"):
            mp, mr, ml = measured["labelled"][(model_name, "trigger")]
            p, r, lab = p + mp, r + mr, lab + ml
        start = time.perf_counter()
        lexical = evaluate_ranking(lexical_ranking(pairs, p, r, lab), planted).as_dict()
        lexical_seconds = time.perf_counter() - start
        rows.append({"behavior": behavior, "activation": activation["activation"], "lexical": lexical,
                     "random": activation["random"], "activation_seconds": round(activation_seconds, 1),
                     "lexical_seconds": round(lexical_seconds, 1)})
        act = activation["activation"] or {}
        print(f"{behavior:<24} P@N activation {act.get('precision_at_n', float('nan')):.2f}  lexical "
              f"{lexical['precision_at_n']:.2f}  random {activation['random']['precision_at_n']:.2f}   AUROC "
              f"{act.get('auroc', float('nan')):.3f} / {lexical['auroc']:.3f}   seconds {activation_seconds:.1f} / "
              f"{lexical_seconds:.1f}", flush=True)
    print(json.dumps({"seed": args.seed, "preset": args.preset, "rows": rows}))


if __name__ == "__main__":
    main()
