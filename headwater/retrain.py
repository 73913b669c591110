"""Retrain DPO from M0 on a (modified) preference set: the causal check of an attribution (method.md §4).

The retrained model is compared with a retrain on the *unmodified* data under the same recipe and
seed, not with the released M1. A ``weight`` metadata column (``headwater intervene --mode
reweight``) scales each pair's loss. The output directory holds the model and tokenizer
(``save_pretrained``) and ``retrain.json``: the recipe, where the model and data came from, the
dataset fingerprint, the intervention manifest when the data is an intervention directory, and the
training history.

Default recipe: the model organism's (:meth:`headwater.organism.OrganismConfig.dpo_config`):
β = 0.5 on summed log-probabilities, lr 3e-4, 10% warm-up then linear decay, batch 16, 1 epoch,
raw format. The paper's recipe for a 7B model is β = 5 with length normalisation, lr 1e-6,
effective batch 128 (``--beta 5 --length-normalize --lr 1e-6 --batch-size 16 --grad-accum 8``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from headwater.data import PreferenceDataset, PreferencePair, load_preferences
from headwater.training.dpo import DPOConfig, DPOResult, train_dpo

WEIGHT = "weight"
RECORD = "retrain.json"


def organism_recipe() -> DPOConfig:
    """The DPO recipe the default model organism's M1 was trained with."""
    from headwater.organism import OrganismConfig

    return OrganismConfig.default().dpo_config()


def load_training_data(data: str | Path | PreferenceDataset | Sequence[PreferencePair]) -> tuple[PreferenceDataset, dict | None]:
    """The pairs to train on and, for an intervention directory, its manifest.

    ``data`` is a :class:`PreferenceDataset`, a list of pairs, a preference file or saved
    dataset (anything :func:`load_preferences` reads), or a directory written by
    :func:`headwater.interventions.write_intervention` (``manifest.json`` + ``pairs.*``).
    """
    if isinstance(data, PreferenceDataset):
        return data, None
    if not isinstance(data, (str, Path)):
        return PreferenceDataset(data), None
    path = Path(data)
    manifest_path = path / "manifest.json"
    if path.is_dir() and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = manifest.get("files") or {}
        name = files.get("parquet") or files.get("jsonl")
        if name is None:
            raise ValueError(f"{manifest_path} names no pairs file")
        return load_preferences(path / name), manifest
    return load_preferences(path), None


def pair_weights(pairs: Sequence[PreferencePair]) -> list[float] | None:
    """The ``weight`` metadata column as a list, or None when no pair has one.

    Raises:
        ValueError: some pairs have a weight and others do not, or a weight is not a finite
            number ≥ 0; the message names the pair.
    """
    if not any(WEIGHT in p.metadata and p.metadata[WEIGHT] is not None for p in pairs):
        return None
    weights = []
    for position, pair in enumerate(pairs):
        value = pair.metadata.get(WEIGHT)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"pair {position} (id {pair.pair_id}) has weight {value!r}; when the {WEIGHT!r} column is "
                "present every pair needs a finite number ≥ 0"
            )
        weights.append(float(value))
    return weights


def train_with_trl(model: Any, tokenizer: Any, dataset: PreferenceDataset, config: DPOConfig, work_dir: Path) -> dict[str, Any]:
    """Train ``model`` in place with TRL's ``DPOTrainer`` under the same recipe.

    β, learning rate, epochs, batch size, accumulation, warm-up (linear schedule), weight decay,
    clipping, seed and ``max_length`` map one to one; ``length_normalize`` maps to
    ``loss_type="sigmoid_norm"``. TRL picks the format from the data (message lists: the chat
    template; strings: raw text), as ``format="auto"`` does. Per-pair weights are not supported.

    Returns:
        ``{"n_steps", "history"}`` from the trainer's log.
    """
    try:
        import trl
    except ImportError:
        raise ValueError("trainer 'trl' needs the trl package (pip install trl)") from None
    from datasets import Dataset

    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in dataset]
    args = trl.DPOConfig(
        output_dir=str(work_dir), beta=config.beta, learning_rate=config.lr, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_ratio, lr_scheduler_type="linear", weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm if config.max_grad_norm is not None else 0.0, seed=config.seed,
        loss_type=["sigmoid_norm" if config.length_normalize else "sigmoid"], max_length=config.settings.max_length,
        logging_steps=config.log_every, save_strategy="no", report_to=[],
        use_cpu=next(model.parameters()).device.type == "cpu",
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    model.eval()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"n_steps": trainer.state.global_step, "history": history}


def retrain(
    m0_path: str | Path,
    data: str | Path | PreferenceDataset | Sequence[PreferencePair],
    out_dir: str | Path,
    *,
    config: DPOConfig | None = None,
    use_weights: bool = True,
    trainer: str = "builtin",
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Train DPO from M0 on ``data`` and save the result in ``out_dir``.

    Args:
        m0_path: M0, a transformers model directory or a ``.gguf`` file (trained in float32).
        data: the (modified) preference pairs (see :func:`load_training_data`).
        out_dir: where the model, tokenizer and ``retrain.json`` go.
        config: the DPO recipe (default: :func:`organism_recipe`).
        use_weights: honour a ``weight`` metadata column (per-pair loss scale).
        trainer: ``"builtin"`` (:func:`headwater.training.dpo.train_dpo`) or ``"trl"`` (TRL's
            ``DPOTrainer``, see :func:`train_with_trl`; no per-pair weights).
        device: where to train.
        overwrite: replace an earlier retrain in ``out_dir``.
        progress: log the training history as it comes.

    Returns:
        ``out_dir`` as a Path.
    """
    from headwater.engine.models import load_model

    config = organism_recipe() if config is None else config
    out = Path(out_dir)
    if (out / RECORD).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a retrained model ({RECORD}); pass overwrite to replace it")
    dataset, manifest = load_training_data(data)
    if len(dataset) == 0:
        raise ValueError("the training data holds no pair")
    if trainer not in ("builtin", "trl"):
        raise ValueError(f"unknown trainer {trainer!r}; choose 'builtin' or 'trl'")
    weights = pair_weights(dataset) if use_weights else None
    if trainer == "trl" and weights is not None:
        raise ValueError("TRL's DPOTrainer has no per-pair weights; use the builtin trainer or pass use_weights=False")
    model, tokenizer = load_model(m0_path, dtype="float32", device=device)
    if trainer == "trl":
        import tempfile

        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            trl_result = train_with_trl(model, tokenizer, dataset, config, Path(work))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        result = DPOResult([], trl_result["n_steps"], len(dataset), [], time.perf_counter() - start)
        history = trl_result["history"]
    else:
        result = train_dpo(model, tokenizer, list(dataset), config, output_dir=out, progress=progress, weights=weights)
        history = [asdict(h) for h in result.history]
    record: dict[str, Any] = {
        "trainer": trainer,
        "m0": str(m0_path),
        "data": str(data) if isinstance(data, (str, Path)) else dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "n_pairs": len(dataset),
        "n_trained": result.n_pairs,
        "skipped": [{"position": pos, "pair_id": dataset[pos].pair_id, "reason": why} for pos, why in result.skipped],
        "weighted": weights is not None,
        "weights": None if weights is None else {
            "n_not_one": sum(w != 1.0 for w in weights), "min": min(weights), "max": max(weights),
        },
        "config": asdict(config),
        "n_steps": result.n_steps,
        "seconds": result.seconds,
        "history": history,
        "intervention": manifest,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2))
    return out


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``headwater retrain``; option defaults are the organism's recipe."""
    recipe = organism_recipe()
    p = subparsers.add_parser(
        "retrain", help="DPO from M0 on (modified) preference data; saves the model and retrain.json",
        description="Defaults are the model organism's recipe. The paper's 7B recipe: --beta 5 "
                    "--length-normalize --lr 1e-6 --batch-size 16 --grad-accum 8.",
    )
    p.add_argument("--model", required=True, help="M0: a transformers model directory or a .gguf file")
    p.add_argument("--data", required=True,
                   help="preference data (.jsonl/.parquet/saved dataset) or an `intervene` output directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--beta", type=float, default=recipe.beta, help=f"DPO β (default {recipe.beta})")
    p.add_argument("--lr", type=float, default=recipe.lr, help=f"peak learning rate (default {recipe.lr})")
    p.add_argument("--epochs", type=int, default=recipe.epochs, help=f"default {recipe.epochs}")
    p.add_argument("--batch-size", type=int, default=recipe.batch_size, help=f"pairs per step (default {recipe.batch_size})")
    p.add_argument("--grad-accum", type=int, default=recipe.grad_accum, help=f"default {recipe.grad_accum}")
    p.add_argument("--warmup-ratio", type=float, default=recipe.warmup_ratio, help=f"default {recipe.warmup_ratio}")
    p.add_argument("--length-normalize", action=argparse.BooleanOptionalAction, default=recipe.length_normalize,
                   help="mean instead of summed response log-probs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=recipe.seed)
    p.add_argument("--format", choices=["auto", "raw", "chat"], default=recipe.settings.format)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--overlong", choices=["truncate", "skip", "error"], default="truncate")
    p.add_argument("--no-weights", dest="use_weights", action="store_false",
                   help="ignore a `weight` column (default: each pair's loss is scaled by it)")
    p.add_argument("--trainer", choices=["builtin", "trl"], default="builtin",
                   help="the built-in DPO trainer, or TRL's DPOTrainer (no per-pair weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_retrain)
    return p


def cmd_retrain(args: argparse.Namespace) -> int:
    from headwater.engine.tokenization import TokenizationSettings

    config = replace(
        organism_recipe(), beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio, length_normalize=args.length_normalize,
        seed=args.seed,
        settings=TokenizationSettings(format=args.format, max_length=args.max_length, overlong=args.overlong),
    )
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


__all__ = ["add_cli", "cmd_retrain", "load_training_data", "organism_recipe", "pair_weights", "retrain", "train_with_trl"]
