"""Exploratory: filter the surprise-weighted activation ranking's top N on the hard organism, retrain, measure.

Continues an experiment directory written by ``bench/hard_organism.py`` (same organism, settings,
baseline and evaluation): the probe's ranking there (``rankings-activation.parquet``) is weighted
by σ(−m/τ), m being M0's per-token margin of chosen over rejected (``bench/surprise_weighting.py``),
its top N is filtered, the model is retrained from M0, and the behaviour rate is compared with the
directory's retrained baseline:

    python bench/surprise_retrain.py --seed 0 --behavior sycophancy --out DIR --tau 0.25
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from surprise_weighting import m0_margins  # noqa: E402  (a sibling script)

from headwater.engine.models import load_model  # noqa: E402
from headwater.methods.attribution import Ranking, evaluate_ranking  # noqa: E402
from headwater.workflows.experiment import BASELINE, SAMPLES, Experiment, cell_name  # noqa: E402
from headwater.workflows.experiment_summary import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--behavior", default="distractor_compliance")
    parser.add_argument("--out", type=Path, required=True, help="the experiment directory of bench/hard_organism.py")
    parser.add_argument("--tau", type=float, default=0.25)
    args = parser.parse_args()
    exp = Experiment(preset="hard", seed=args.seed, behavior=args.behavior, samples=SAMPLES, probe_samples=None,
                     out_dir=args.out, cache_dir=None, n_boot=2000, progress=False)
    exp.open_dir()
    exp.setup()
    torch.set_num_threads(exp.organism.config.num_threads)
    base = json.loads((args.out / "cells" / BASELINE / "result.json").read_text())
    probe = exp.rankings["activation"]
    m0, tokenizer = load_model(exp.organism.m0_path)
    margins = m0_margins(m0, tokenizer, list(exp.organism.load_preferences()), exp.organism.settings)
    m = np.array([margins.get(p, 0.0) for p in probe.pair_ids])
    weighted = np.asarray(probe.scores, dtype=np.float64) / (1.0 + np.exp(m / args.tau))
    name = f"surprise{args.tau:g}"
    exp.rankings[name] = Ranking.from_scores(probe.pair_ids, weighted.astype(np.float32), name)
    n = len(exp.planted)
    quality = evaluate_ranking(exp.rankings[name], exp.planted).as_dict()
    result, _ = exp.run_cell(cell_name(name, "filter", n), name, "filter", n)
    cell = summarize(result, base, n_boot=2000, seed=args.seed)
    print(json.dumps({"seed": args.seed, "behavior": args.behavior, "tau": args.tau, "quality": quality,
                      "planted_changed": result["planted_changed"], "baseline_rate": base["evaluation"]["trigger"]["rate"],
                      "filter": {k: cell[k] for k in ("rate", "ci_low", "ci_high", "reduction", "reduction_ci")}}))


if __name__ == "__main__":
    main()
