"""``headwater retrain``: DPO from M0 on (modified) preference data."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from headwater.cli.options import add_overwrite_option, add_tokenization_options

# Recipe fields a flag may override; a flag left unset keeps the recipe's value.
OVERRIDES = ("beta", "lr", "epochs", "batch_size", "grad_accum", "warmup_ratio", "length_normalize", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    import headwater.organism  # noqa: F401  (registers the organism's recipe)
    from headwater.training.recipes import RECIPES

    p = sub.add_parser(
        "retrain", help="DPO from M0 on (modified) preference data; saves the model and retrain.json",
        description="Train DPO from M0 with a named recipe (default: the model organism's, β = 0.5 on summed "
                    "log-probabilities, lr 3e-4, batch 16, one epoch); any flag below overrides that field of "
                    "the recipe. The paper's 7B recipe is --recipe paper-7b (β = 5, length-normalised, lr 1e-6, "
                    "effective batch 128).",
    )
    p.add_argument("--model", required=True, help="M0: a transformers model directory or a .gguf file")
    p.add_argument("--data", required=True,
                   help="preference data (.jsonl/.parquet/saved dataset) or an `intervene` output directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="organism", help="the recipe to start from")
    p.add_argument("--beta", type=float, default=None, help="DPO β")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--epochs", type=int, default=None, help="passes over the pairs")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass")
    p.add_argument("--grad-accum", type=int, default=None, help="forward passes per optimiser step")
    p.add_argument("--warmup-ratio", type=float, default=None, help="fraction of steps warming the rate up")
    p.add_argument("--length-normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="mean instead of summed response log-probs")
    p.add_argument("--seed", type=int, default=None, help="seed of the batch order and of torch")
    add_tokenization_options(p, fmt="raw")
    p.add_argument("--no-weights", dest="use_weights", action="store_false",
                   help="ignore a `weight` column (default: each pair's loss is scaled by it)")
    p.add_argument("--trainer", choices=["builtin", "trl"], default="builtin",
                   help="the built-in DPO trainer, or TRL's DPOTrainer (no per-pair weights)")
    p.add_argument("--device", default="cpu", help="torch device to train on")
    add_overwrite_option(p, "a retrained model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.cli.options import settings_from
    from headwater.training.recipes import recipe
    from headwater.training.retrain import RECORD, retrain

    base = recipe(args.recipe)
    changes = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    config = replace(base, **changes, settings=settings_from(args))
    try:
        out = retrain(args.model, args.data, args.out, config=config, use_weights=args.use_weights,
                      trainer=args.trainer, device=args.device, overwrite=args.overwrite, progress=True)
    except FileExistsError as err:  # the CLI reports ValueErrors as one line
        raise ValueError(f"{err} (--overwrite)") from None
    record = json.loads((out / RECORD).read_text())
    last = record["history"][-1] if record["history"] else {}
    print(f"retrained on {record['n_trained']} pairs in {record['n_steps']} steps ({record['seconds']:.1f}s), "
          f"final loss {last.get('loss', float('nan')):.4f} -> {out}")
    return 0
