"""The judge baseline (judge(chosen) − judge(rejected)) on the model organism, with its cost.

    python bench/judge_organism.py --seed 0                    # the organism's rule-based judges
    python bench/judge_organism.py --seed 0 --judge hf:PATH --judge-behavior "..."  # an LLM judge

Prints precision@N and AUROC per planted behaviour (N = the planted count) and the judge's wall
time and number of judged responses.
"""
from __future__ import annotations

import argparse
import time

from headwater.baselines.judge_ranking import judge_ranking
from headwater.methods.attribution import evaluate_ranking
from headwater.methods.judge_registry import resolve_judge
from headwater.organism import OrganismConfig, build_organism


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature"])
    parser.add_argument("--judge", default=None, help="a judge spec; default: the organism's judge of each behaviour")
    parser.add_argument("--judge-rubric", default="yesno")
    parser.add_argument("--judge-behavior", default=None)
    parser.add_argument("--behavior", default=None, help="only this planted behaviour (an LLM judge's rubric names one)")
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    pairs = list(organism.load_preferences())
    for behavior in [args.behavior] if args.behavior else organism.behaviors:
        judge = organism.judges[behavior] if args.judge is None else resolve_judge(
            args.judge, {"rubric": args.judge_rubric, "behavior": args.judge_behavior})
        start = time.perf_counter()
        result = judge_ranking(pairs, judge)
        seconds = time.perf_counter() - start
        metrics = evaluate_ranking(result.ranking, organism.planted_ids(behavior))
        print(f"{behavior:<24} judge {judge.name}: P@N {metrics.precision_at_n:.2f}  AUROC {metrics.auroc:.3f}  "
              f"{result.n_judged} responses judged in {seconds:.2f} s, {result.n_unscored} pairs unscored", flush=True)


if __name__ == "__main__":
    main()
