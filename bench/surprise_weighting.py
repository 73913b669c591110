"""Exploratory: activation attribution weighted by how much M0 disagrees with each pair's label.

On the hard organism the activation probe ranks decoys (pairs that look like the behaviour but
teach what M0 already does) as high as the planted pairs. A pair whose chosen answer M0 already
prefers changes little of what M0 generates; a pair whose chosen answer M0 finds unlikely
changes much. This script weights each pair's probe cosine by σ(−m/τ), where m is M0's margin
log π0(chosen) − log π0(rejected), per response token, and compares precision@N, AUROC and the
decoys among the top N with the plain probe and with the margin alone (which is not specific to
a behaviour). Rankings only: no retraining.

    python bench/surprise_weighting.py --preset hard --seeds 0 1
    python bench/surprise_weighting.py --preset default --seeds 0 1 --behaviors distractor_compliance

Caveat, stated where the figures are: τ is compared over three values on the same data.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from headwater.engine.models import load_model, resolve_layer
from headwater.engine.tokenization import encode_pairs, pad_batch
from headwater.methods.attribution import Ranking, evaluate_ranking
from headwater.methods.vectors import datapoint_vectors
from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.training.common import response_logps
from headwater.workflows.organism_attribution import SAMPLES_PER_PROMPT, attribute_behavior, measure_behavior

TAUS = (0.25, 0.5, 1.0)


def m0_margins(model, tokenizer, pairs, settings, batch: int = 64) -> dict[str, float]:
    """Pair id → M0's mean per-token log-prob of chosen minus that of rejected."""
    enc = encode_pairs(tokenizer, pairs, settings)
    out = {}
    with torch.no_grad():
        for s in range(0, len(enc.encoded), batch):
            chunk, ids = enc.encoded[s:s + batch], enc.kept[s:s + batch]
            logps = response_logps(model, pad_batch([c for c, _ in chunk] + [r for _, r in chunk], tokenizer.pad_token_id),
                                   average=True)
            for j, i in enumerate(ids):
                out[pairs[i].pair_id] = float(logps[j] - logps[len(chunk) + j])
    return out


def row(ranking: Ranking, planted: set, decoys: set) -> dict:
    ev = evaluate_ranking(ranking, planted)
    top = set(ranking.pair_ids[:len(planted)])
    return {"precision_at_n": ev.precision_at_n, "auroc": ev.auroc, "decoys_in_top": len(top & decoys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="hard")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--behaviors", nargs="+", default=["distractor_compliance", "sycophancy"])
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        organism = build_organism(OrganismConfig.preset(args.preset, seed))
        torch.set_num_threads(organism.config.num_threads)
        models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
        m0, tokenizer = models["m0"]
        layer = resolve_layer(m0, None)
        pairs = list(organism.load_preferences())
        dp = datapoint_vectors(m0, tokenizer, pairs, layer=layer, settings=organism.settings)
        margins = m0_margins(m0, tokenizer, pairs, organism.settings)
        for behavior in args.behaviors:
            planted, decoys = set(organism.planted_ids(behavior)), set(organism.decoy_ids(behavior))
            measured = measure_behavior(organism, behavior, models, SAMPLES_PER_PROMPT, seed, max_new_tokens_for(args.preset))
            probe = attribute_behavior(m0, tokenizer, layer, measured["labelled"], dp, sorted(planted), organism.settings,
                                       test_prompts=organism.test_prompts[behavior], behavior=behavior)["ranking"]
            cos = np.asarray(probe.scores, dtype=np.float64)
            m = np.array([margins.get(p, 0.0) for p in probe.pair_ids])
            res = {"plain": row(probe, planted, decoys),
                   "margin_only": row(Ranking.from_scores(probe.pair_ids, (-m).astype(np.float32), "margin"), planted, decoys),
                   "planted_margin_mean": float(np.mean([margins[p] for p in planted if p in margins])),
                   "decoy_margin_mean": float(np.mean([margins[p] for p in decoys if p in margins])) if decoys else None}
            for tau in TAUS:
                weighted = cos * (1.0 / (1.0 + np.exp(m / tau)))
                res[f"tau_{tau}"] = row(Ranking.from_scores(probe.pair_ids, weighted.astype(np.float32), "surprise"),
                                        planted, decoys)
            results[f"{seed}/{behavior}"] = res
            cells = "; ".join(f"{k} {v['precision_at_n']:.2f} (AUROC {v['auroc']:.3f}, decoys {v['decoys_in_top']})"
                              for k, v in res.items() if isinstance(v, dict))
            print(f"{args.preset} seed {seed} {behavior}: {cells}", flush=True)
    print(json.dumps({"preset": args.preset, "results": results}))


if __name__ == "__main__":
    main()
