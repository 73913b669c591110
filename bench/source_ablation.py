"""The paper's source-level ablation on the organism: rank data sources by their share of the
activation ranking's top N against their share of the data, drop the over-represented ones,
retrain, and measure the behaviour beside the baseline, the top-N filter and the clean data.

The organism's pairs get generator names (``headwater.organism.sources``: ten generators, two
contaminated ones per planted behaviour holding 75% of its planted pairs). Runs the experiment
with the activation ranking only, filter mode, N = the planted count, and ``source_ablation``:

    python bench/source_ablation.py --seed 0 --json /tmp/sources-0.json
"""
from __future__ import annotations

import argparse
import json
import logging

from headwater.methods.sources import SourceShare, format_sources
from headwater.workflows.experiment import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--max-sources", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    doc = run_experiment(preset=args.preset, seed=args.seed, methods=["activation"], modes=["filter"],
                         n_values=None, source_ablation=args.max_sources, progress=False)
    n = doc["organism"]["n_planted"]
    sources = doc["source_ablation"]
    print(f"\nseed {args.seed}: sources by their share of the activation ranking's top {sources['top']}")
    print(format_sources([SourceShare(**row) for row in sources["table"]], sources["top"]))
    print(f"dropped: {sources['dropped']} (contaminated for the behaviour: {sources['contaminated']}); "
          f"{sources['n_removed']} pairs removed, {sources['planted_removed']} of the {n} planted")
    rows = [("baseline", doc["baseline_rate"]), ("clean data", doc["clean_data"]),
            *[(f"activation filter N={k}", c) for k, c in doc["rates"]["activation"]["filter"].items()]]
    if sources["result"]:
        rows.append(("source ablation", sources["result"]))
    for label, c in rows:
        red = f", reduction {100 * c['reduction']:.1f}% [{100 * c['reduction_ci'][0]:.1f}, {100 * c['reduction_ci'][1]:.1f}]" if "reduction" in c else ""
        print(f"  {label:28s} triggered {100 * c['rate']:.1f}% [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]{red}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)


if __name__ == "__main__":
    main()
