"""Exploratory: the surprise-weighted probe (bench/surprise_weighting.py) on SmolLM2-135M-Instruct.

On the hard organism, weighting each pair's probe cosine by σ(−m/τ) (m: M0's per-token margin of
chosen over rejected) removed the decoys from the top of the ranking. Those decoys were built to be
pairs M0 already agrees with. This script asks what the weighting costs, or gains, on a real
model's data, where nothing was built that way: the real-model loop's promotion task
(bench/smollm2_loop.py; 160 pairs from SmolLM2's own samples, 40 planted, whose chosen answer opens
with a "BrightPath" promotion), the activation probe of `headwater compare` on the judged answers
of M0 and M1, and the margins from one M0 forward pass of every pair:

    OMP_NUM_THREADS=2 python bench/surprise_smollm2.py --work runs/smollm2-25 --out runs/surprise-smollm2

The loop's stages are cached in --work (about 7 minutes the first time). Prints precision@40 and
AUROC of the plain probe, the weighted probe at each τ and the margin alone, the mean margin of the
planted and the clean pairs, and a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_smollm2 import loop_and_labelled  # noqa: E402  (a sibling script)
from surprise_weighting import TAUS, m0_margins  # noqa: E402

from headwater.engine.models import resolve_layer  # noqa: E402
from headwater.methods.attribution import Ranking, evaluate_ranking  # noqa: E402
from headwater.workflows.compare import CompareInputs, compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the real-model loop's work directory (cached stages)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loop, labelled, loop_seconds = loop_and_labelled(args.work, args.threads)
    config = loop.config
    m0, tokenizer = loop.m0()
    pairs = list(loop.dataset())
    planted = set(loop.planted_ids())
    inputs = CompareInputs(model=m0, tokenizer=tokenizer, layer=resolve_layer(m0, config.layer),
                           settings=config.settings, pairs=pairs,
                           labelled=labelled, behavior="promotion",
                           planted=planted)
    compare(inputs, ["activation"], args.out, seed=config.seed, progress=False)
    probe = Ranking.load(args.out / "rankings-activation.parquet")
    start = time.perf_counter()
    margins = m0_margins(m0, tokenizer, pairs, config.settings, batch=8)
    margin_seconds = time.perf_counter() - start
    missing = [p for p in probe.pair_ids if p not in margins]  # pairs the tokenisation dropped (too long)
    if missing:
        raise SystemExit(f"{len(missing)} pairs have no M0 margin (dropped by the tokenisation settings)")
    m = np.array([margins[p] for p in probe.pair_ids])
    rankings = {"plain": probe, "margin_only": Ranking.from_scores(probe.pair_ids, -m, "margin")}
    for tau in TAUS:
        weighted = probe.scores / (1.0 + np.exp(m / tau))  # cosine × σ(−m/τ)
        rankings[f"tau_{tau}"] = Ranking.from_scores(probe.pair_ids, weighted.astype(np.float32), f"tau_{tau}")
    result: dict = {"n_pairs": len(pairs), "n_planted": len(planted), "labelled": len(labelled.labels),
                    "labelled_exhibiting": int(sum(labelled.labels)), "loop_seconds_this_call": round(loop_seconds, 1),
                    "margin_seconds": round(margin_seconds, 1),
                    "planted_margin_mean": float(np.mean([margins[p] for p in planted])),
                    "clean_margin_mean": float(np.mean([v for p, v in margins.items() if p not in planted]))}
    for name, ranking in rankings.items():
        ev = evaluate_ranking(ranking, planted)
        result[name] = {"precision_at_n": ev.precision_at_n, "auroc": ev.auroc}
        print(f"{name:12s} P@{len(planted)} {ev.precision_at_n:.3f}  AUROC {ev.auroc:.3f}")
    print(f"mean per-token M0 margin: planted {result['planted_margin_mean']:+.3f}, "
          f"clean {result['clean_margin_mean']:+.3f} ({margin_seconds:.1f} s for {len(pairs)} pairs)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
