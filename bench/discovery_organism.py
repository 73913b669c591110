"""Unsupervised discovery on the default model organism: does clustering recover the planted behaviours?

    HEADWATER_CACHE=/path/to/cache python bench/discovery_organism.py [--seed 0] [--ranking mean_cosine] [--json out.json]

Builds (or loads from the cache) ``OrganismConfig.default()``, samples M0 and M1 on every held-out
test prompt of every behaviour (with and without the trigger), builds one behaviour change vector
per (prompt, M1 sample, M0 sample), and runs :func:`headwater.methods.discovery.discover` against the
datapoint vectors of all pairs. The behaviours are NOT given to the clustering; the ground truth
is used only afterwards, to score it:

- per cluster: the family mix of its top-N pairs (N = the planted count of its majority family,
  and 20), the purity (share of the majority family), and, using the organism's judges, how many
  of its members' M1 responses exhibit the behaviour of the prompt they came from;
- per planted behaviour: the best cluster's share of that behaviour's planted pairs in its top N;
- the adjusted Rand index between cluster labels and the behaviour each test prompt came from:
  per prompt (its most common cluster), over the clustered behaviour vectors, over all of them
  (unclustered ones as a class of their own), and over the clustered vectors whose M1 response
  the organism's judge says exhibits the prompt's behaviour while the M0 response does not.

Measured on the development machine (2 CPU cores, shared), defaults (2 samples, top_k 50,
threshold 0.9; ranking "diffusion" with 50 seed pairs, a 20-neighbour pair graph, α 0.95),
organism WORLD_VERSION 6 / BUILD_VERSION 2: share of each behaviour's planted pairs in the best
cluster's top N (N = planted count = 160) — seed 0: distractor compliance 0.97, sycophancy 0.99,
hallucinated links 1.00; seed 1: 0.97, 1.00, 1.00. With ``--ranking mean_cosine`` (the members'
mean cosine alone) the same clusters give seed 0: 0.84, 0.71, 1.00; seed 1: 0.80, 0.65, 1.00.
Why the mean cosine falls short: each behaviour's planted pairs come in several wordings
(chosen × rejected templates), the members' mean points at the wordings M1 produced, and planted
pairs of the *other* behaviours, which share a generic direction with it (their chosen answer is
one M0 rarely gives), outrank the remaining wordings (seed 1: 43 hallucinated-link and 10
distractor pairs in the sycophancy cluster's top N; seed 0: 20 distractor pairs). The diffusion
over the pairs' neighbour graph reaches the other wordings, which share a chosen or a rejected
wording with the seeds, and not the other behaviours' pairs; it also lifts the top-20 purity of
the small clean-family clusters (refusals, corrections, "no link", format) to 1.0 in most of them.
The behaviour is still split over several clusters by the wording of M1's answer (seed 0:
sycophancy clusters 2, 6 and 16 give 0.88, 0.75 and 0.99). ARI against the source behaviour (the
clustering does not depend on the ranking): seed 0 0.30 per prompt, 0.27 per clustered vector,
0.79 over clustered vectors whose M1 response exhibits the behaviour; seed 1 0.36, 0.30, 0.79.
The organism's pair families are cleanly separated in the datapoint vectors (99.8% of the 20
nearest neighbours of a planted pair are planted pairs of the same behaviour), which is what the
diffusion relies on; on real data, where families overlap, expect a smaller gain. Offline on the
same vectors, the recovery stays >= 0.87 for every behaviour over top_k 30/50/100 and thresholds
0.85-0.95, and >= 0.95 for α 0.93-0.97.
Discovery itself takes about a second (the pair graph included); sampling and the datapoint
vectors 20-35 s on the loaded machine with the organism cached.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from headwater.methods.cards import format_cards
from headwater.methods.behaviors import sample_behavior_vectors
from headwater.methods.discovery import RANKINGS, DiscoveryConfig, discover
from headwater.engine.models import load_model, resolve_layer
from headwater.organism import OrganismConfig, build_organism
from headwater.methods.vectors import datapoint_vectors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="organism seed")
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt and model")
    ap.add_argument("--conditions", default="trigger,no_trigger", help="test prompt conditions to use")
    ap.add_argument("--top-k", type=int, default=DiscoveryConfig.top_k)
    ap.add_argument("--distance-threshold", type=float, default=DiscoveryConfig.distance_threshold)
    ap.add_argument("--min-cluster-size", type=int, default=DiscoveryConfig.min_cluster_size)
    ap.add_argument("--ranking", choices=RANKINGS, default=DiscoveryConfig.ranking, help="how each cluster's pairs are ranked")
    ap.add_argument("--cards", action="store_true", help="print the cluster cards too")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    start = time.perf_counter()
    config = OrganismConfig.default(seed=args.seed)
    organism = build_organism(config)
    torch.set_num_threads(config.num_threads)
    m0, tok = load_model(organism.m0_path)
    m1, _ = load_model(organism.m1_path)
    layer = resolve_layer(m0, None)
    pairs = list(organism.load_preferences())
    dp = datapoint_vectors(m0, tok, pairs, layer=layer, settings=organism.settings)
    family = {row["pair_id"]: row["family"] for row in organism.ground_truth["pairs"]}

    prompts, source, condition = [], [], []
    for behavior, by_condition in organism.test_prompts.items():
        for cond in args.conditions.split(","):
            prompts += by_condition[cond]
            source += [behavior] * len(by_condition[cond])
            condition += [cond] * len(by_condition[cond])
    samples = sample_behavior_vectors(m0, m1, tok, prompts, layer=layer, settings=organism.settings,
                                      samples=args.samples, seed=args.seed)
    t_vectors = time.perf_counter() - start
    cfg = DiscoveryConfig(top_k=args.top_k, distance_threshold=args.distance_threshold,
                          min_cluster_size=args.min_cluster_size, top_pairs=200, ranking=args.ranking)
    t0 = time.perf_counter()
    result = discover(samples.vectors, dp.pair_ids, dp.vectors, prompts=samples.prompts,
                      m0_responses=samples.m0_responses, m1_responses=samples.m1_responses,
                      pairs={p.pair_id: p for p in pairs}, config=cfg)
    t_discover = time.perf_counter() - t0

    row_source = [source[i] for i in samples.prompt_index]
    row_cond = [condition[i] for i in samples.prompt_index]
    # Judges score only afterwards: did M1's response exhibit its prompt's behaviour, and M0's not?
    exhibits = np.zeros(len(row_source), dtype=bool)
    for behavior, judge in organism.judges.items():
        rows = [i for i, s in enumerate(row_source) if s == behavior]
        m1s = judge.score_batch([samples.prompts[i] for i in rows], [samples.m1_responses[i] for i in rows])
        m0s = judge.score_batch([samples.prompts[i] for i in rows], [samples.m0_responses[i] for i in rows])
        for i, a, b in zip(rows, m1s, m0s):
            exhibits[i] = a >= judge.threshold and b < judge.threshold

    planted = {b: set(organism.planted_ids(b)) for b in organism.behaviors}
    cluster_rows = []
    for c in result.clusters:
        ids = [p for p, _ in c.top_pairs]
        fam20 = Counter(family[p] for p in ids[:20])
        major = fam20.most_common(1)[0][0]
        n = len(planted.get(major, ())) or 20
        famn = Counter(family[p] for p in ids[:n])
        members_src = Counter(row_source[i] for i in c.members)
        cluster_rows.append({
            "cluster": c.cluster_id, "size": c.size, "coherence": round(c.coherence, 3),
            "sources": dict(members_src), "trigger_share": float(np.mean([row_cond[i] == "trigger" for i in c.members])),
            "exhibit_share": float(exhibits[c.members].mean()),
            "majority_family": major, "n": n, "purity_at_n": famn[major] / n, "purity_at_20": fam20[major] / 20,
            "top_families": dict(famn.most_common(4)),
            "words_chosen": [w for w, _ in c.words_chosen[:8]], "words_rejected": [w for w, _ in c.words_rejected[:8]],
        })
    recovery = {}
    for b, ids in planted.items():
        best = max(
            ((sum(p in ids for p, _ in c.top_pairs[: len(ids)]) / len(ids), c.cluster_id) for c in result.clusters),
            default=(0.0, None),
        )
        recovery[b] = {"n_planted": len(ids), "best_cluster": best[1], "planted_share_of_top_n": best[0],
                       "m1_exhibits_rows": int(sum(exhibits[i] for i, s in enumerate(row_source) if s == b))}
    labels = result.labels
    clustered = labels >= 0
    ari_clustered = adjusted_rand_score(np.array(row_source)[clustered], labels[clustered]) if clustered.any() else float("nan")
    ari_all = adjusted_rand_score(row_source, labels)
    # Prompt level: each prompt takes the most common cluster among its behaviour vectors (-1: none clustered).
    prompt_label = []
    for p in range(len(prompts)):
        own = [int(labels[i]) for i, q in enumerate(samples.prompt_index) if q == p and labels[i] >= 0]
        prompt_label.append(Counter(own).most_common(1)[0][0] if own else -1)
    ari_prompts = adjusted_rand_score(source, prompt_label)
    ex = exhibits & clustered
    ari_exhibiting = adjusted_rand_score(np.array(row_source)[ex], labels[ex]) if ex.sum() > 1 else float("nan")

    out = {
        "n_pairs": len(pairs), "layer": layer, "n_prompts": len(prompts), "n_behavior_vectors": len(row_source),
        "n_clustered": int(clustered.sum()), "n_near_zero": len(result.near_zero),
        "ari_clustered": ari_clustered, "ari_prompts": ari_prompts, "ari_all": ari_all, "ari_exhibiting": ari_exhibiting,
        "clusters": cluster_rows, "recovery": recovery,
        "seconds_vectors": round(t_vectors, 1), "seconds_discover": round(t_discover, 2),
        "config": vars(args),
    }
    print(f"organism seed {args.seed}: {len(pairs)} pairs, layer {layer}; {len(prompts)} test prompts x "
          f"{args.samples}^2 = {len(row_source)} behaviour vectors; {int(clustered.sum())} clustered, "
          f"{len(result.near_zero)} near zero\n")
    print(f"{'cl':>3}{'size':>6}{'coh':>6}{'trig':>6}{'exhib':>7}  {'majority family':<24}{'N':>5}{'pur@N':>7}{'pur@20':>8}  sources")
    for r in cluster_rows:
        print(f"{r['cluster']:>3}{r['size']:>6}{r['coherence']:>6.2f}{r['trigger_share']:>6.2f}{r['exhibit_share']:>7.2f}  "
              f"{r['majority_family']:<24}{r['n']:>5}{r['purity_at_n']:>7.2f}{r['purity_at_20']:>8.2f}  {r['sources']}")
    print(f"\n{'planted behaviour':<24}{'planted':>8}{'M1 exhibits':>13}{'best cl':>9}{'planted share of top N':>24}")
    for b, r in recovery.items():
        print(f"{b:<24}{r['n_planted']:>8}{r['m1_exhibits_rows']:>13}{str(r['best_cluster']):>9}{r['planted_share_of_top_n']:>24.2f}")
    print(f"\nARI (cluster vs source behaviour): prompts {ari_prompts:.3f}, clustered vectors {ari_clustered:.3f}, all vectors "
          f"{ari_all:.3f}, clustered vectors whose M1 response exhibits the behaviour {ari_exhibiting:.3f}")
    print(f"time: vectors {t_vectors:.1f} s (organism load, datapoint vectors, generation), discover {t_discover:.2f} s")
    if args.cards:
        print("\n" + format_cards(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
