"""``headwater audit``: which concepts separate chosen from rejected responses, before training."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from headwater.cli.options import (
    add_batch_tokens_option,
    add_layer_option,
    add_model_options,
    add_on_error_option,
    add_tokenization_options,
    settings_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="concepts (SAE features) that separate chosen from rejected responses, before training",
        description="Encode every chosen and rejected response through an SAE on M0 at block ℓ, pool the features "
                    "per response, and test per latent, per co-activation cluster and per prompt topic × cluster "
                    "whether chosen responses carry more of it than rejected ones (paired t, 95% CI, effect size, "
                    "Benjamini-Hochberg q, split-half sign). Writes audit.json, audit.html (concept cards with "
                    "highlighted tokens) and feedback.tsv (mark each concept keep/suppress/amplify/ignore).",
    )
    add_model_options(p, what="M0, the model before preference training")
    add_layer_option(p)
    add_batch_tokens_option(p)
    p.add_argument("--data", required=True, help="preference data: .jsonl, .parquet or a saved HF dataset dir")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    add_on_error_option(p)
    p.add_argument("--sae", required=True, type=Path,
                   help="an SAE directory in SAELens's format (from `headwater sae train` or SAELens), or with "
                        "--sparsify one in EleutherAI sparsify's")
    p.add_argument("--sparsify", action="store_true", help="--sae is in sparsify's format")
    p.add_argument("--hookpoint", default=None, help="with --sparsify: the hookpoint subdirectory, e.g. layers.6")
    p.add_argument("--out", required=True, type=Path, help="directory for features/, audit.json, audit.html, feedback.tsv")
    p.add_argument("--pooling", choices=["mean", "max"], default="mean",
                   help="per-response pooling of a latent over its tokens (default mean)")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate for significance (default 0.05)")
    p.add_argument("--topics", type=int, default=8, help="prompt topics (default 8)")
    p.add_argument("--top", type=int, default=20, help="concepts in the table (default 20)")
    p.add_argument("--cards", type=int, default=10, help="concepts with a card (default 10)")
    p.add_argument("--seed", type=int, default=0, help="split halves and topics (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    add_tokenization_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.audit.audit import AuditConfig
    from headwater.workflows.audit import audit_dataset

    summary = audit_dataset(
        model_path=args.model, data=args.data, sae_path=args.sae, out_dir=args.out,
        config=AuditConfig(pooling=args.pooling, alpha=args.alpha, n_topics=args.topics, seed=args.seed),
        layer=args.layer, sparsify=args.sparsify, hookpoint=args.hookpoint, settings=settings_from(args),
        split=args.split, on_error=args.on_error, dtype=args.dtype, device=args.device,
        max_tokens_per_batch=args.max_tokens_per_batch, top=args.top, cards=args.cards, progress=args.progress,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['n_pairs']} pairs; {summary['n_latents_tested']} latents tested, "
          f"{summary['n_latents_significant']} significant; {summary['n_clusters']} clusters")
    print(summary["table"])
    print()
    print(summary["cards"])
    print(f"\nwritten: {summary['out']}/audit.json, audit.html; decisions go in {summary['feedback']}")
    return 0
