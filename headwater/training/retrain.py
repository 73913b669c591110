"""Retrain DPO from M0 on a (modified) preference set: the causal check of an attribution (method.md §4).

:func:`retrain` is the one retrain-from-M0 path of headwater (the CLI, the experiment and the
real-model loop all use it). The retrained model is compared with a retrain on the *unmodified*
data under the same recipe and seed, not with the released M1. A ``weight`` metadata column (``headwater intervene --mode
reweight``) scales each pair's loss. The output directory holds the model and tokenizer
(``save_pretrained``) and ``retrain.json``: the recipe, where the model and data came from, the
dataset fingerprint, the intervention manifest when the data is an intervention directory, and the
training history.

The recipe is a :class:`~headwater.training.dpo.DPOConfig` or a registered name
(:mod:`headwater.training.recipes`: ``paper-7b``, and ``organism`` once the organism is imported).
``trainable_blocks`` trains only the top decoder blocks and the final norm (a CPU-sized retrain of
a real model).
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from headwater.data import PreferenceDataset, PreferencePair, load_preferences
from headwater.engine import atomic
from headwater.engine.models import decoder_blocks, load_model, make_saveable
from headwater.methods.interventions import read_intervention
from headwater.training.dpo import DPOConfig, DPOResult, train_dpo
from headwater.training.recipes import recipe
from headwater.training.residual_edit import ResidualEdit

WEIGHT = "weight"
RECORD = "retrain.json"


def load_training_data(data: str | Path | PreferenceDataset | Sequence[PreferencePair]) -> tuple[PreferenceDataset, dict | None]:
    """The pairs to train on and, for an intervention directory, its manifest.

    ``data`` is a :class:`PreferenceDataset`, a list of pairs, a preference file or saved
    dataset (anything :func:`load_preferences` reads), or a directory written by
    :func:`headwater.methods.interventions.write_intervention` (``manifest.json`` + ``pairs.*``).
    """
    if isinstance(data, PreferenceDataset):
        return data, None
    if not isinstance(data, (str, Path)):
        return PreferenceDataset(data), None
    path = Path(data)
    if path.is_dir() and ((path / "manifest.json").is_file() or any(path.glob("pairs.*"))):
        return read_intervention(path)  # checked against its manifest
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


def freeze_lower_blocks(model: torch.nn.Module, trainable_blocks: int | None) -> int:
    """Leave only the top ``trainable_blocks`` decoder blocks and the final norm trainable.

    Returns the number of trainable parameters. None keeps every parameter trainable. The
    embeddings (tied to the LM head in SmolLM2) stay frozen, so the LM head does too.
    """
    if trainable_blocks is not None:
        blocks = decoder_blocks(model)
        if trainable_blocks > len(blocks):
            raise ValueError(f"trainable_blocks is {trainable_blocks} but the model has {len(blocks)} blocks")
        model.requires_grad_(False)
        for block in blocks[len(blocks) - trainable_blocks :]:
            block.requires_grad_(True)
        norm = getattr(getattr(model, "model", model), "norm", None)
        if isinstance(norm, torch.nn.Module):
            norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    config: DPOConfig | str | None = None,
    use_weights: bool = True,
    trainer: str = "builtin",
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    trainable_blocks: int | None = None,
    margin_offsets: Sequence[float] | None = None,
    residual_edit: ResidualEdit | None = None,
    feature_intervention: dict[str, Any] | None = None,
) -> Path:
    """Train DPO from M0 on ``data`` and save the result in ``out_dir``.

    Args:
        m0_path: M0, a transformers model directory or a ``.gguf`` file (trained in float32).
        data: the (modified) preference pairs (see :func:`load_training_data`).
        out_dir: where the model, tokenizer and ``retrain.json`` go.
        config: the DPO recipe, or a registered recipe name (default: :class:`DPOConfig`'s defaults).
        use_weights: honour a ``weight`` metadata column (per-pair loss scale).
        trainer: ``"builtin"`` (:func:`headwater.training.dpo.train_dpo`) or ``"trl"`` (TRL's
            ``DPOTrainer``, see :func:`train_with_trl`; no per-pair weights).
        device: where to train.
        overwrite: replace an earlier retrain in ``out_dir``.
        progress: log the training history as it comes.
        trainable_blocks: train only this many top decoder blocks and the final norm (see
            :func:`freeze_lower_blocks`); None trains every parameter.
        margin_offsets: per pair of ``data``, an offset of its DPO logit (the audit's
            reward-shaping intervention; builtin trainer only).
        residual_edit: a concept projected out of, or added to, block ℓ's output while training
            (the audit's feature intervention; builtin trainer only).
        feature_intervention: what produced the two above (decisions, mode), for the record.

    Returns:
        ``out_dir`` as a Path. ``retrain.json`` is written last: its presence marks a finished
        retrain.
    """
    config = DPOConfig() if config is None else recipe(config) if isinstance(config, str) else config
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        what = f"a retrained model ({RECORD})" if (out / RECORD).exists() else "files"
        raise FileExistsError(f"{out} already holds {what}; pass overwrite to replace it")
    dataset, manifest = load_training_data(data)
    if len(dataset) == 0:
        raise ValueError("the training data holds no pair")
    if trainer not in ("builtin", "trl"):
        raise ValueError(f"unknown trainer {trainer!r}; choose 'builtin' or 'trl'")
    weights = pair_weights(dataset) if use_weights else None
    if trainer == "trl" and weights is not None:
        raise ValueError("TRL's DPOTrainer has no per-pair weights; use the builtin trainer or pass use_weights=False")
    if trainer == "trl" and (margin_offsets is not None or residual_edit is not None):
        raise ValueError("feature interventions (margin offsets, residual edits) need the builtin trainer")
    model, tokenizer = load_model(m0_path, dtype="float32", device=device)
    make_saveable(model)  # an M0 loaded from GGUF must be saved as plain weights, not fail after training
    n_trainable = freeze_lower_blocks(model, trainable_blocks)
    if trainer == "trl":
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            trl_result = train_with_trl(model, tokenizer, dataset, config, Path(work))
        result = DPOResult([], trl_result["n_steps"], len(dataset), [], time.perf_counter() - start)
        history = trl_result["history"]
    else:
        result = train_dpo(model, tokenizer, list(dataset), config, progress=progress, weights=weights,
                           margin_offsets=margin_offsets, residual_edit=residual_edit)
        history = [asdict(h) for h in result.history]
    record: dict[str, Any] = {
        "trainer": trainer,
        "m0": str(m0_path),
        "data": str(data) if isinstance(data, (str, Path)) else dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "n_pairs": len(dataset),
        "n_trained": result.n_pairs,
        "trainable_blocks": trainable_blocks,
        "n_trainable_params": n_trainable,
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
        "feature_intervention": feature_intervention,
    }
    # The model, its tokenizer and the record are built in a temporary directory and swapped in
    # whole: a reader sees the old complete directory or the new one, never a model without its
    # record or a record beside another run's weights.
    with atomic.atomic_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        atomic.write_json(staging / RECORD, record)
    return out


__all__ = ["RECORD", "WEIGHT", "freeze_lower_blocks", "load_training_data", "pair_weights", "retrain", "train_with_trl"]
