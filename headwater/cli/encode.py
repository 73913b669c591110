"""``headwater encode``: datapoint vectors of every pair of a preference dataset, into a vector store."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from headwater.cli.options import (
    add_batch_tokens_option,
    add_layer_option,
    add_model_options,
    add_on_error_option,
    add_overwrite_option,
    add_tokenization_options,
    settings_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="datapoint vectors v_d = ā(chosen) − ā(rejected) of every pair, on M0",
        description="Stream a preference dataset through M0 up to block ℓ and write every pair's datapoint "
                    "vector to a vector store (shards + manifest). Resumable; under torchrun the shards are "
                    "split across processes.",
    )
    add_model_options(p, what="M0, the model before preference training")
    add_layer_option(p)
    add_batch_tokens_option(p)
    p.add_argument("--data", required=True, help="preference data: .jsonl, .parquet or a saved HF dataset dir")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    add_on_error_option(p)
    p.add_argument("--out", required=True, type=Path, help="vector store directory")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (same model, layer, data and settings): "
                        "complete shards are kept, the rest is computed")
    add_overwrite_option(p, "a store or partial run")
    p.add_argument("--store-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype of the stored vectors (pooling is always float32)")
    p.add_argument("--shard-pairs", type=int, default=4096,
                   help="dataset pairs per shard: the unit of writing, resuming and splitting across ranks")
    p.add_argument("--no-share-prompt", dest="share_prompt", action="store_false",
                   help="run chosen and rejected as separate sequences instead of encoding their prompt once")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (headwater's and transformers')")
    add_tokenization_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.engine import distributed
    from headwater.workflows.encode import encode_dataset

    if not args.progress:  # transformers' own bars too (loading weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        summary = encode_dataset(
            model_path=args.model, data=args.data, out_dir=args.out, layer=args.layer, settings=settings_from(args),
            dtype=args.dtype, device=args.device, split=args.split, on_error=args.on_error,
            max_tokens_per_batch=args.max_tokens_per_batch, resume=args.resume, overwrite=args.overwrite,
            store_dtype=args.store_dtype, shard_pairs=args.shard_pairs,
            share_prompt="auto" if args.share_prompt else False, progress=args.progress,
        )
    finally:
        distributed.shutdown()  # under torchrun: leave the process group (no-op otherwise)
    if summary["rank"] == 0:  # under torchrun every rank returns; one prints
        print(json.dumps(summary, indent=2))
    return 0
