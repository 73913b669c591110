"""``headwater experiment``: filter and switch the top-N pairs of each ranking, retrain, measure."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import add_judge_option, add_organism_options, judge_options


def register(sub: argparse._SubParsersAction) -> None:
    from headwater.workflows.experiment import METHODS, MODES, SAMPLES

    p = sub.add_parser(
        "experiment", help="filter and switch the top-N pairs of each ranking, retrain, and measure the behaviour",
        description="Retrained baseline, filter and switch at several N for activation attribution and random "
                    "selection on the model organism; rates with bootstrap intervals and relative reductions. "
                    "Resumable: finished cells in --out are kept.",
    )
    add_organism_options(p)
    p.add_argument("--behavior", default=None, help="planted behaviour (default: distractor_compliance)")
    add_judge_option(p, required=False)
    p.add_argument("--n", type=int, nargs="+", default=None, metavar="N",
                   help="how many top pairs to change (default: N/2, N, 2N with N = the planted count)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="ranking methods whose top N is filtered and switched (default: activation random; the "
                        "baselines bank, gradient, judge and lexical rank as `headwater compare` does)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="interventions to apply")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help=f"responses per test prompt and condition (default {SAMPLES})")
    p.add_argument("--probe-samples", type=int, default=None, help="responses per test prompt for the probe (default 4)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--random-orders", type=int, default=1, metavar="R",
                   help="run random selection's cells with R random orders and report each order's rate with their "
                        "mean and range (default 1)")
    p.add_argument("--unfiltered-probe", action="store_true",
                   help="build the probe from every triggered generation instead of the scenarios that pass the "
                        "paper's four-condition filter (both are scored either way)")
    p.add_argument("--source-ablation", type=int, default=0, metavar="S",
                   help="rank the organism's data sources by their share of the activation ranking's top N, drop "
                        "at most S significantly over-represented ones and retrain (default 0: off)")
    p.add_argument("--training-seeds", type=int, default=0, metavar="K",
                   help="also retrain the unmodified data under K other DPO seeds (training noise)")
    p.add_argument("--ground-truth-seeds", type=int, default=1, metavar="K",
                   help="retrain the ground-truth cells (baseline, without the planted pairs, without the decoys) "
                        "under K DPO seeds and compare their means, intervals over prompts and seeds (default 1)")
    p.add_argument("--out", type=Path, default=None, help="experiment directory (default: under the cache)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--report", type=Path, default=None, help="write the HTML report here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.workflows.experiment import SETUP_METHODS, run_experiment, write_outputs
    from headwater.workflows.experiment_summary import format_table

    doc = run_experiment(
        preset=args.preset, seed=args.seed, behavior=args.behavior, n_values=args.n,
        methods=args.methods or list(SETUP_METHODS), modes=args.modes, samples=args.samples, probe_samples=args.probe_samples, out_dir=args.out,
        cache_dir=args.cache_dir, n_boot=args.n_boot, training_seeds=args.training_seeds,
        ground_truth_seeds=args.ground_truth_seeds,
        random_orders=args.random_orders, source_ablation=args.source_ablation,
        filtered_probe=not args.unfiltered_probe, judge=args.judge,
        judge_options=judge_options(args),
    )
    print(format_table(doc))
    write_outputs(doc, args.json, args.report)
    return 0
