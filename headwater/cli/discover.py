"""``headwater discover``: find behaviours without being told them, and the pairs behind each."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headwater.cli.options import add_judge_option, add_sampling_options, judge_from
from headwater.methods.discovery import RANKINGS, DiscoveryConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover", help="cluster behaviour change vectors into discovered behaviours and their pairs",
        description="Sample M0 (the store's model) and M1 on test prompts, turn every (M1 sample, M0 sample) into "
                    "a behaviour change vector on M0, cluster those vectors by the pairs they point at, and print "
                    "a card per cluster: its prompts, M0 versus M1 answers, its top pairs and the words that set "
                    "their chosen responses apart (docs/method.md §3). With --judge, each card also says how "
                    "often the cluster's M0 and M1 answers exhibit the judged behaviour.",
    )
    p.add_argument("--vectors", required=True, type=Path,
                   help="a vector store from `headwater encode` (M0 and layer from its manifest)")
    p.add_argument("--m1", required=True, type=Path, help="the preference-trained model M1")
    p.add_argument("--prompts", required=True, type=Path,
                   help="test prompts: a text file (one per line) or JSONL rows {\"prompt\": ...}")
    p.add_argument("--data", type=Path, default=None,
                   help="the preference data, for the distinguishing words of each cluster")
    p.add_argument("--out", required=True, type=Path, help="JSON file of the clusters and their cards")
    add_judge_option(p, required=False)
    add_sampling_options(p, samples=2, samples_help="samples per prompt from each model (samples² vectors per prompt)",
                         batch_size=False)
    p.add_argument("--top-k", type=int, default=DiscoveryConfig.top_k,
                   help=f"entries kept per row of the similarity matrix (default {DiscoveryConfig.top_k})")
    p.add_argument("--distance-threshold", type=float, default=DiscoveryConfig.distance_threshold,
                   help="agglomerative cut on 1 − affinity; lower makes more, tighter clusters "
                        f"(default {DiscoveryConfig.distance_threshold})")
    p.add_argument("--min-cluster-size", type=int, default=DiscoveryConfig.min_cluster_size,
                   help=f"smaller clusters are noise (default {DiscoveryConfig.min_cluster_size})")
    p.add_argument("--top-pairs", type=int, default=DiscoveryConfig.top_pairs,
                   help=f"pairs listed per cluster (default {DiscoveryConfig.top_pairs})")
    p.add_argument("--ranking", choices=RANKINGS, default=DiscoveryConfig.ranking,
                   help="how each cluster's pairs are ranked: diffusion over the pairs' neighbour graph, or "
                        "mean cosine only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.data import load_preferences, load_prompts
    from headwater.engine.models import load_model
    from headwater.engine.store import VectorStore
    from headwater.workflows.encode import store_model_settings
    from headwater.methods.cards import format_cards
    from headwater.methods.behaviors import sample_behavior_vectors
    from headwater.methods.discovery import discover

    prompts = load_prompts(args.prompts)  # bad input fails before any model loads
    judge = judge_from(args.judge, args) if args.judge is not None else None
    store = VectorStore.open(args.vectors)
    manifest = store.manifest
    model_path, layer, settings, model_dtype = store_model_settings(manifest)
    m0, tokenizer = load_model(model_path, dtype=model_dtype)
    m1, _ = load_model(args.m1)
    config = DiscoveryConfig(top_k=args.top_k, distance_threshold=args.distance_threshold,
                             min_cluster_size=args.min_cluster_size, top_pairs=args.top_pairs, ranking=args.ranking)
    samples = sample_behavior_vectors(
        m0, m1, tokenizer, prompts, layer=layer, settings=settings,
        samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
    )
    pairs = {p.pair_id: p for p in load_preferences(args.data)} if args.data is not None else None
    result = discover(samples.vectors, store.pair_ids, searchable_keys(store), prompts=samples.prompts,
                      m0_responses=samples.m0_responses, m1_responses=samples.m1_responses, pairs=pairs, config=config,
                      judge=judge)
    result.save(args.out)
    print(format_cards(result))
    print(f"\n-> {args.out}")
    return 0


def searchable_keys(store):
    """The store's keys for the many searches of discovery: its search-ready copy (written beside
    the shards the first time, so later searches skip the conversion pass), or its shards where
    the copy cannot be made (a read-only store, no C++ extension)."""
    from headwater.engine.store import StoreError

    try:
        return store.search_keys()
    except (StoreError, OSError) as error:
        print(f"note: searching the shards directly ({error})", file=sys.stderr)
        return list(store.blocks())
