"""``headwater sae train``: a sparse autoencoder on the response tokens of a preference dataset."""
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
    p = sub.add_parser("sae", help="sparse autoencoders for the concept audit (train)",
                       description="Sparse autoencoders on M0's activations at block ℓ, saved in SAELens's format.")
    actions = p.add_subparsers(dest="sae_command", required=True, metavar="action")
    t = actions.add_parser(
        "train", help="train a BatchTopK or TopK SAE on the response tokens of a preference dataset",
        description="Stream every response token (chosen and rejected) of the data through M0 up to block ℓ and "
                    "train a sparse autoencoder on those activations through a bounded shuffle buffer. Saved in "
                    "SAELens's format (cfg.json + sae_weights.safetensors; BatchTopK as its JumpReLU inference "
                    "form). Checkpoints in --out make an interrupted run resume where it stopped.",
    )
    add_model_options(t, what="M0, the model before preference training")
    add_layer_option(t)
    add_batch_tokens_option(t)
    t.add_argument("--data", required=True, help="preference data: .jsonl, .parquet or a saved HF dataset dir")
    t.add_argument("--split", default=None, help="split of a saved DatasetDict")
    add_on_error_option(t)
    t.add_argument("--out", required=True, type=Path, help="the SAE's directory")
    t.add_argument("--architecture", choices=["batchtopk", "topk"], default="batchtopk",
                   help="BatchTopK (the audit paper's choice) or TopK (default batchtopk)")
    t.add_argument("--k", type=int, default=16, help="active latents per token (default 16)")
    t.add_argument("--expansion", type=int, default=8, help="latents per activation dimension (default 8)")
    t.add_argument("--d-sae", type=int, default=None, help="latents (overrides --expansion)")
    t.add_argument("--passes", type=float, default=4.0, help="passes over the response tokens (default 4)")
    t.add_argument("--tokens", type=int, default=None, help="tokens to train on (overrides --passes)")
    t.add_argument("--batch-tokens", type=int, default=1024, help="tokens per step (default 1024)")
    t.add_argument("--buffer-tokens", type=int, default=1 << 15,
                   help="shuffle buffer capacity in tokens, the bound on memory (default 32768)")
    t.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default 2e-4/sqrt(d_sae/16384))")
    t.add_argument("--dead-after-tokens", type=int, default=200_000,
                   help="a latent silent this many tokens counts as dead and gets the auxiliary loss (default 200000)")
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_tokenization_options(t)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from headwater.audit.sae_training import SAETrainingConfig
    from headwater.workflows.audit import train_sae_on_dataset

    config = SAETrainingConfig(
        architecture=args.architecture, d_sae=args.d_sae, expansion=args.expansion, k=args.k,
        total_tokens=args.tokens, epochs=args.passes, batch_tokens=args.batch_tokens,
        buffer_tokens=args.buffer_tokens, lr=args.lr, dead_after_tokens=args.dead_after_tokens, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    summary = train_sae_on_dataset(
        model_path=args.model, data=args.data, out_dir=args.out, config=config, layer=args.layer,
        settings=settings_from(args), split=args.split, on_error=args.on_error, dtype=args.dtype, device=args.device,
        max_tokens_per_batch=args.max_tokens_per_batch, progress=args.progress,
    )
    print(json.dumps(summary, indent=2))
    return 0
