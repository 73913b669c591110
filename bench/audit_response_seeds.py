"""How much does what the audit finds depend on the audit's own seed (split halves, prompt topics
and the per-topic k-means)? Re-runs the audit statistics on an organism's stored features under
several audit seeds and prints, per planted set (the sign-off and the three behaviours), its best
match among the top 10 of each of the audit's four lists by |d| (over all pairs, conditional,
topic concepts, response concepts): rank, d, and how many of that concept's carriers are planted.
Two criteria, each counted per list: *clean carriers* (that match's carriers, the pairs above half
its typical difference, are at least 80% planted) and *ranked* (its top |set| pairs are at least
80% planted, precision@n ≥ 0.8). Needs a finished `bench/audit_organism.py` directory (its
features and summary).

    python bench/audit_response_seeds.py --run /tmp/audit-organism --audit-seeds 0 1 2
    python bench/audit_response_seeds.py --run /tmp/audit-organism --response-clusters 8 --topics 16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_organism import match_concepts, planted_sets, write_json  # noqa: E402

from headwater.audit.audit import CLUSTERINGS, AuditConfig, run_audit  # noqa: E402
from headwater.audit.features import FeatureStore  # noqa: E402
from headwater.organism import OrganismConfig, build_organism  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/audit_organism.py --out directory")
    parser.add_argument("--audit-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--response-clusters", type=int, default=AuditConfig.response_clusters)
    parser.add_argument("--topics", type=int, default=AuditConfig.n_topics)
    parser.add_argument("--clusters", choices=CLUSTERINGS, default=AuditConfig.clusters)
    parser.add_argument("--json", type=Path, help="also write the tally here")
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    org = build_organism(OrganismConfig.audit(int(summary["seed"])))  # cached: only read
    store = FeatureStore.open(args.run / "audit" / "features")
    pairs = org.load_preferences()
    prompt_of = {p.pair_id: p.prompt for p in pairs}
    sets = planted_sets(org)
    doc_base = json.loads((args.run / "audit" / "audit.json").read_text())
    print(f"organism seed {summary['seed']}, {len(store)} pairs, {args.topics} prompt topics, "
          f"{args.response_clusters} response clusters per topic")
    names = ("over_all", "conditional", "topic", "response")
    criteria = {"clean_carriers": lambda best: best["carrier_precision"] >= 0.8 and best["carriers"] > 0,
                "ranked": lambda best: best["precision_at_n"] >= 0.8}
    tally = {c: {b: {**{name: 0 for name in names}, "topic_or_response": 0, "any": 0} for b in sets}
             for c in criteria}
    for audit_seed in args.audit_seeds:
        result = run_audit(store, AuditConfig(response_clusters=args.response_clusters, n_topics=args.topics,
                                              clusters=args.clusters, seed=audit_seed),
                           prompts=[p.prompt for p in pairs])
        doc = {**doc_base, "cards": [], "config": {**doc_base["config"], "pooling": result.config.pooling}}
        topics = result.topics
        lists = {"over_all": (result.concepts(10), None), "conditional": (result.conditional_concepts(10), None),
                 "topic": (result.topic_concepts(10), None),
                 "response": (result.response_concepts(10), result.response_centroids)}
        hit = {c: {b: set() for b in sets} for c in criteria}
        for name, (concepts, centroids) in lists.items():
            found = match_concepts(concepts, doc, store, sets, prompt_of, topics, centroids) if concepts else {}
            cells = []
            for behaviour, best in found.items():
                for criterion, meets in criteria.items():
                    if meets(best):
                        hit[criterion][behaviour].add(name)
                clean = criteria["clean_carriers"](best)
                cells.append(f"{behaviour}: {best['concept']} rank {best['rank']} d {best['d']:+.2f} "
                             f"precision@n {best['precision_at_n']:.2f} carriers "
                             f"{round(best['carrier_precision'] * best['carriers'])}/{best['carriers']} planted"
                             f"{'' if clean else ' (no clean match)'}")
            print(f"  audit seed {audit_seed}, {name} concepts: " + "; ".join(cells))
        for criterion, by_set in hit.items():
            for behaviour, lists_hit in by_set.items():
                counts = tally[criterion][behaviour]
                for name in lists_hit:
                    counts[name] += 1
                counts["topic_or_response"] += bool(lists_hit & {"topic", "response"})
                counts["any"] += bool(lists_hit)
    runs = len(args.audit_seeds)
    for criterion, by_set in tally.items():
        print(f"{criterion} (≥ 80% planted) in a top 10, audit seeds out of {runs}:")
        for behaviour, t in by_set.items():
            print(f"  {behaviour}: " + ", ".join(f"{name} {count}" for name, count in t.items()))
    if args.json:
        write_json(args.json, {"organism_seed": summary["seed"], "audit_seeds": args.audit_seeds,
                               "topics": args.topics, "response_clusters": args.response_clusters,
                               "clusters": args.clusters, "matches": tally})


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
