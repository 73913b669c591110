"""The keyword oracle: how well could the best single word (or word pair) filter find the planted pairs?

Given the ground truth, it tries every word and word pair (lower-cased, scikit-learn's default
word pattern) as a filter on each field of a pair: the prompt, the chosen response, the rejected
response, and the chosen response's words that the rejected one lacks; and every AND of two such
terms among the most promising ones (any fields). A filter selects the
pairs whose field contains the term; its precision@N is |selected ∩ planted| / max(N, |selected|)
(N = the planted count): a filter selecting more than N pairs gets the expected precision of N pairs
drawn from its selection, since a single filter has no order of its own. The best filter's
precision is an upper bound on any single-keyword method, and a benchmark on which attribution
methods can differ needs it low (at most 0.6 for the hard organism's generalising behaviours).

    python bench/keyword_oracle.py --seed 0                      # every behaviour of the organism
    python bench/keyword_oracle.py --preset hard --seed 0        # the hard benchmark organism
    python bench/keyword_oracle.py --data pairs.jsonl --planted planted.txt

Prints, per behaviour, the best filters and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from headwater.methods.keyword_oracle import best_filters  # the oracle itself; this file is its command line


def _print(name: str, res: dict[str, Any]) -> None:
    best, pair = res["best"], res["best_pair"]
    print(f"{name}: {res['n_planted']} planted of {res['n_pairs']}; best single filter: {best['field']} contains "
          f"{best['term']!r}, precision@N {best['precision_at_n']:.2f}; best pair: {' AND '.join(pair['terms'])}, "
          f"{pair['precision_at_n']:.2f} ({pair['planted_selected']}/{pair['selected']})")
    for field, rows in res["fields"].items():
        print(f"  {field:<20} " + "; ".join(f"{r['term']!r} {r['precision_at_n']:.2f} ({r['planted_selected']}/"
                                              f"{r['selected']})" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature", "small", "hard"])
    parser.add_argument("--data", type=Path, default=None, help="preference pairs (instead of the organism)")
    parser.add_argument("--planted", type=Path, default=None, help="with --data: planted pair ids, one per line")
    args = parser.parse_args()
    results = {}
    if args.data is not None:
        from headwater.data import load_preferences

        if args.planted is None:
            parser.error("--data needs --planted")
        planted = {line.strip() for line in args.planted.read_text().splitlines() if line.strip()}
        results["data"] = best_filters(list(load_preferences(args.data)), planted)
    else:
        from headwater.organism import OrganismConfig, build_organism

        organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
        pairs = list(organism.load_preferences())
        for behavior in organism.behaviors:
            results[behavior] = best_filters(pairs, set(organism.planted_ids(behavior)))
    for name, res in results.items():
        _print(name, res)
    print(json.dumps({"seed": args.seed, "preset": args.preset, "results": results}))


if __name__ == "__main__":
    main()
