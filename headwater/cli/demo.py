"""``headwater demo``: the attribution pipeline end to end on the built-in model organism."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import add_organism_options
from headwater.workflows.stages import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="build the model organism, measure its planted behaviours and attribute them",
        description="Build (or reuse) the model organism (M0 by SFT, a preference set with planted pairs, M1 by "
                    "DPO), measure each planted behaviour on held-out prompts, and rank every pair by cosine with "
                    "the behaviour's probing vector, next to random selection.",
    )
    add_organism_options(p)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per test prompt and model (default 4; with --full also in the experiment's "
                        "evaluations, default 8 there)")
    p.add_argument("--out", type=Path, default=None, help="also write the rankings here (and the experiment, with --full)")
    p.add_argument("--unfiltered-probe", action="store_true",
                   help="build the probe from every triggered generation instead of the scenarios that pass the "
                        "paper's four-condition filter (both are reported either way)")
    p.add_argument("--full", action="store_true",
                   help="also run the experiment (filter/switch, retrain, evaluate) and write the HTML report")
    p.add_argument("--report", type=Path, default=None,
                   help="with --full: the HTML report's path (default headwater-report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.workflows.demo import run_demo

    if args.report is not None and not args.full:
        raise ValueError("--report needs --full (the report shows the experiment)")
    results = run_demo(preset=args.preset, cache_dir=args.cache_dir, seed=args.seed, samples=args.samples,
                       out_dir=args.out, filtered_probe=not args.unfiltered_probe)
    if args.full:
        from headwater.workflows.experiment import SAMPLES, run_experiment, write_outputs
        from headwater.workflows.experiment_summary import format_table

        doc = run_experiment(preset=args.preset, seed=args.seed, cache_dir=args.cache_dir,
                             samples=args.samples if args.samples is not None else SAMPLES,
                             filtered_probe=not args.unfiltered_probe,
                             out_dir=args.out / "experiment" if args.out is not None else None)
        print(format_table(doc))
        write_outputs(doc, None, args.report or Path("headwater-report.html"))
        results["experiment"] = doc
    if args.json is not None:
        write_json_atomic(args.json, results, indent=2)
        print(f"results written to {args.json}")
    return 0
