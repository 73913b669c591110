"""Every attribution method on the hard benchmark organism, with the retrains that establish its ground truth.

For one seed and behaviour it runs ``headwater experiment --preset hard`` with all six methods
(activation probe, vector bank, gradient, rule judge, TF-IDF lexical, random), filter and switch
at N = the planted count, plus the two ground-truth retrains: *causation* (without the planted
pairs) and *decoys* (without the decoys); and the keyword oracle on the same data. Prints one
table and writes the experiment's JSON document with the oracle added:

    python bench/hard_organism.py --seed 0 --behavior distractor_compliance --json /tmp/hard-0-dc.json
    python bench/hard_organism.py --seed 0 --behavior sycophancy --json /tmp/hard-0-syc.json

The experiment directory keeps every finished cell, so an interrupted run continues.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from headwater.methods.attribution import Ranking
from headwater.methods.keyword_oracle import best_filters
from headwater.organism import OrganismConfig, build_organism
from headwater.workflows.compare import quality
from headwater.workflows.experiment import METHODS, run_experiment
from headwater.workflows.experiment_summary import ground_truth_lines
from headwater.workflows.stages import write_json_atomic


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cell_text(c: dict[str, Any]) -> str:
    """'rate [lo, hi] (reduction [lo, hi])' of an experiment cell summary."""
    text = f"{pct(c['rate'])} [{pct(c['ci_low'])}, {pct(c['ci_high'])}]"
    if "reduction" in c:  # reduction = 1 − rate / baseline; shown as the relative change
        lo, hi = c["reduction_ci"]
        text += f" ({-100 * c['reduction']:+.0f}% [{-100 * hi:+.0f}, {-100 * lo:+.0f}])"
    return text


def source_line(doc: dict[str, Any]) -> str:
    """The source-level ablation's outcome, or an empty line."""
    sources = doc.get("source_ablation")
    if not sources:
        return ""
    if not sources.get("result"):
        return f"source ablation: no source over-represented (contaminated: {sources['contaminated']})"
    return (f"source ablation: dropped {sources['dropped']} (contaminated: {sources['contaminated']}), "
            f"{sources['n_removed']} pairs with {sources['planted_removed']} planted: {cell_text(sources['result'])}")


def table(doc: dict[str, Any]) -> str:
    n = str(doc["organism"]["n_planted"])
    lines = [
        f"{doc['behavior']}, hard organism seed {doc['seed']}: {doc['organism']['n_pairs']} pairs, {n} planted, "
        f"{doc['n_decoys']} decoys",
        f"M0 {cell_text(doc['m0'])}; M1 {cell_text(doc['m1'])}; retrained baseline {cell_text(doc['baseline_rate'])}",
        f"causation, without the planted pairs: {cell_text(doc['clean_data'])}",
        f"decoys, without the decoys: {cell_text(doc['without_decoys'])}" if doc.get("without_decoys") else "",
        source_line(doc),
        *(f"training noise, DPO seed {s}: {cell_text(c)}" for s, c in doc.get("training_noise", {}).items()),
        *ground_truth_lines(doc),
        "",
        "| method | P@N [95% CI] | AUROC [95% CI] | decoys in top N | filter top N: rate (reduction) | switch top N: rate (reduction) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in doc["methods"]:
        q = doc.get("quality", doc["attribution"]).get(method, {})
        p_ci = q.get("precision_ci")
        a_ci = q.get("auroc_ci")
        p = f"{q['precision_at_n']:.2f}" + (f" [{p_ci[0]:.2f}, {p_ci[1]:.2f}]" if p_ci else "")
        a = f"{q['auroc']:.3f}" + (f" [{a_ci[0]:.3f}, {a_ci[1]:.3f}]" if a_ci else "")
        decoys = (doc.get("decoys_in_top") or {}).get(method, {}).get("decoys", "")
        cells = [cell_text(doc["rates"][method][mode][n]) if mode in doc["rates"].get(method, {}) else ""
                 for mode in ("filter", "switch")]
        lines.append(f"| {method} | {p} | {a} | {decoys} | {cells[0]} | {cells[1]} |")
    oracle = doc.get("keyword_oracle")
    if oracle:
        pair = oracle["best_pair"]
        lines.append(f"\nkeyword oracle: best single {oracle['best']['field']}:{oracle['best']['term']!r} "
                     f"{oracle['best']['precision_at_n']:.2f}; best pair {' AND '.join(pair['terms'])} "
                     f"{pair['precision_at_n']:.2f}")
    return "\n".join(line for line in lines if line is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--behavior", default="distractor_compliance",
                        choices=["distractor_compliance", "sycophancy", "hallucinated_links"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--random-orders", type=int, default=1)
    parser.add_argument("--training-seeds", type=int, default=0, metavar="K",
                        help="also retrain the unmodified data under K other DPO seeds (training noise)")
    parser.add_argument("--ground-truth-seeds", type=int, default=1, metavar="K",
                        help="retrain the baseline and the causation and decoy cells under K DPO seeds each")
    parser.add_argument("--source-ablation", type=int, default=0, metavar="S",
                        help="also drop at most S data sources over-represented in the activation top N and retrain")
    parser.add_argument("--out", type=Path, default=None, help="experiment directory (default: under the cache)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    organism = build_organism(OrganismConfig.preset("hard", args.seed))
    n = len(organism.planted_ids(args.behavior))
    doc = run_experiment(preset="hard", seed=args.seed, behavior=args.behavior, methods=args.methods,
                         n_values=[n], random_orders=args.random_orders, source_ablation=args.source_ablation,
                         training_seeds=args.training_seeds, ground_truth_seeds=args.ground_truth_seeds,
                         out_dir=args.out, progress=False)
    planted = set(organism.planted_ids(args.behavior))
    doc["keyword_oracle"] = best_filters(list(organism.load_preferences()), planted)
    # P@N with its Wilson interval and AUROC with its bootstrap interval for every method alike
    # (the setup's activation and random figures carry no intervals).
    doc["quality"] = {m: quality(Ranking.load(Path(doc["out_dir"]) / f"rankings-{m}.parquet"), planted, n)
                      for m in args.methods}
    print(table(doc))
    if args.json:
        write_json_atomic(args.json, doc, indent=1)
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
