"""A built-in DPO trainer (Rafailov et al. 2023): sigmoid loss against a frozen reference.

    L = −log σ(β · [(log π(y⁺|x) − log π_ref(y⁺|x)) − (log π(y⁻|x) − log π_ref(y⁻|x))])

With ``length_normalize`` each log π is the *average* log-probability per response token instead
of the sum (the length-normalised DPO of the attribution paper's recipe, as in Tülu 3 / OLMo 2).
Chosen and rejected sequences of a batch go through the model together in one forward pass;
only response tokens count (masks from :mod:`headwater.engine.tokenization`).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from headwater.engine.tokenization import TokenizationSettings, encode_pairs, pad_batch
from headwater.training.residual_edit import ResidualEdit, edited_residual
from headwater.training.common import (
    bucketed_batches,
    linear_warmup_schedule,
    response_logps,
    seed_everything,
    warmup_steps_for,
)

LOG = logging.getLogger(__name__)


@dataclass
class DPOConfig:
    """Hyper-parameters of :func:`train_dpo` (the paper's recipe: β=5 with length
    normalisation, lr 1e-6, 10% warm-up, effective batch 128, 1 epoch, for a 7B model).

    Attributes:
        beta: the DPO temperature β.
        length_normalize: use the mean log-prob per response token instead of the sum.
        lr: peak learning rate of AdamW.
        epochs: passes over the pairs.
        batch_size: pairs per forward pass (2 × batch_size sequences).
        grad_accum: forward passes per optimiser step (effective batch = batch_size × grad_accum).
        warmup_ratio: fraction of optimiser steps warming the rate up linearly from 0; then it
            decays linearly to 0.
        weight_decay: AdamW's decoupled weight decay.
        max_grad_norm: gradient clipping norm (None: no clipping).
        seed: seeds batching order and torch.
        settings: how pairs become tokens.
        log_every: optimiser steps between entries of the history.
    """

    beta: float = 0.1
    length_normalize: bool = False
    lr: float = 5e-4
    epochs: int = 1
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    settings: TokenizationSettings = field(default_factory=lambda: TokenizationSettings(format="raw"))
    log_every: int = 10

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"`beta` must be positive, got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class DPOStepLog:
    """Averages over the optimiser steps since the previous entry.

    Attributes:
        step: the optimiser step (1-based) at which the entry was written.
        loss: the DPO loss.
        reward_accuracy: fraction of pairs whose implicit reward prefers chosen.
        reward_margin: mean of β·(chosen log-ratio − rejected log-ratio).
        chosen_reward / rejected_reward: mean implicit rewards β·(log π − log π_ref).
    """

    step: int
    loss: float
    reward_accuracy: float
    reward_margin: float
    chosen_reward: float
    rejected_reward: float


@dataclass
class DPOResult:
    """What :func:`train_dpo` did.

    Attributes:
        history: one :class:`DPOStepLog` every ``log_every`` optimiser steps (and at the end).
        n_steps: optimiser steps taken.
        n_pairs: pairs trained on (after the over-long policy).
        skipped: (position, reason) of pairs that could not be encoded.
        seconds: wall time.
    """

    history: list[DPOStepLog]
    n_steps: int
    n_pairs: int
    skipped: list[tuple[int, str]]
    seconds: float


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss per pair and the implicit rewards.

    Args:
        policy_chosen, policy_rejected, reference_chosen, reference_rejected: [B] float32
            (summed or averaged) response log-probabilities.
        beta: the temperature β.
        offset: [B] added to β·(chosen − rejected log-ratio) inside the sigmoid (reward shaping:
            a positive offset grants part of the margin, so DPO pushes that pair less).

    Returns:
        (loss [B], chosen_reward [B], rejected_reward [B]); rewards are detached.
    """
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    logits = beta * (chosen_logratio - rejected_logratio)
    if offset is not None:
        logits = logits + offset
    losses = -torch.nn.functional.logsigmoid(logits)
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter's ``requires_grad`` off."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def train_dpo(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    config: DPOConfig = DPOConfig(),
    *,
    reference: torch.nn.Module | None = None,
    output_dir: str | Path | None = None,
    progress: bool = False,
    weights: Sequence[float] | None = None,
    on_epoch_end: Callable[[int, torch.optim.Optimizer, float], None] | None = None,
    margin_offsets: Sequence[float] | None = None,
    residual_edit: ResidualEdit | None = None,
) -> DPOResult:
    """Train ``model`` in place with DPO on ``pairs``; the reference is a frozen copy of it.

    Args:
        model: the policy, a transformers causal LM (M0 at the start; left in eval mode).
        tokenizer: its tokenizer; ``pad_token_id`` must be set.
        pairs: objects with ``prompt`` / ``chosen`` / ``rejected`` (e.g. :class:`PreferencePair`).
        config: the hyper-parameters.
        reference: the frozen reference model; default a frozen copy of ``model`` taken before
            training. It is never updated.
        output_dir: when given, the trained model and the tokenizer are saved there
            (``save_pretrained``).
        progress: a progress bar (steps, step rate, time left, loss, reward accuracy) on stderr.
        weights: optional [len(pairs)] finite weights ≥ 0, one per pair: each pair's loss is
            multiplied by its weight (the optimiser-step average still divides by the number of
            pairs, so all-ones weights train exactly as no weights). The history's statistics
            stay unweighted.
        margin_offsets: optional [len(pairs)] finite offsets added to each pair's DPO logit
            (the audit's reward-shaping variant; see :func:`dpo_loss`).
        residual_edit: an edit of block ℓ's output (project a concept out, or add it) applied to
            the policy and the reference during training only; the saved model carries no hook.

    Returns:
        a :class:`DPOResult`; over-long pairs follow ``settings.overlong`` and are counted.
    """
    if not pairs:
        raise ValueError("train_dpo needs at least one pair")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(pairs):
            raise ValueError(f"{len(weights)} weights for {len(pairs)} pairs")
        bad = [i for i, w in enumerate(weights) if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ValueError(f"weights must be finite and ≥ 0; pair {bad[0]} has {weights[bad[0]]}")
    if margin_offsets is not None:
        margin_offsets = [float(o) for o in margin_offsets]
        if len(margin_offsets) != len(pairs) or not all(math.isfinite(o) for o in margin_offsets):
            raise ValueError(f"margin_offsets must be {len(pairs)} finite numbers, one per pair")
    start = time.perf_counter()
    seed_everything(config.seed)
    if reference is None:
        reference = frozen_copy(model)
    elif any(p.requires_grad for p in reference.parameters()):
        raise ValueError("the reference model must be frozen (requires_grad False on every parameter)")
    encoded_pairs = encode_pairs(tokenizer, pairs, config.settings)
    encoded = encoded_pairs.encoded
    # Weights of the encoded pairs (over-long pairs may have been skipped).
    pair_weights = None if weights is None else torch.tensor([weights[i] for i in encoded_pairs.kept])
    pair_offsets = None if margin_offsets is None else torch.tensor([margin_offsets[i] for i in encoded_pairs.kept])
    if not encoded:
        raise ValueError(f"no pair could be encoded: {encoded_pairs.skipped[:3]}")
    rng = random.Random(config.seed)
    lengths = [max(len(c.input_ids), len(r.input_ids)) for c, r in encoded]
    micro_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = math.ceil(micro_per_epoch / config.grad_accum) * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = linear_warmup_schedule(optimizer, warmup_steps_for(total, config.warmup_ratio), total)

    history: list[DPOStepLog] = []
    window: list[list[float]] = []  # per optimiser step: loss, acc, margin, chosen, rejected
    step = 0
    bar = tqdm(total=total, desc="DPO", unit="step", disable=not progress, leave=False)
    model.train()
    for epoch in range(config.epochs):
        epoch_lrs: list[float] = []
        batches = bucketed_batches(lengths, config.batch_size, rng)
        for group_start in range(0, len(batches), config.grad_accum):
            group = batches[group_start : group_start + config.grad_accum]
            n_group = sum(len(b) for b in group)
            stats = torch.zeros(5)
            optimizer.zero_grad(set_to_none=True)
            for batch_ids in group:
                # Chosen rows first, rejected rows after: one forward pass for both sides.
                sides = [encoded[i][0] for i in batch_ids] + [encoded[i][1] for i in batch_ids]
                batch = pad_batch(sides, tokenizer.pad_token_id)
                n = len(batch_ids)
                with edited_residual(model, residual_edit):
                    policy = response_logps(model, batch, average=config.length_normalize)  # [2n]
                with torch.no_grad(), edited_residual(reference, residual_edit):
                    ref = response_logps(reference, batch, average=config.length_normalize)  # [2n]
                offset = None if pair_offsets is None else pair_offsets[batch_ids]
                losses, chosen_reward, rejected_reward = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], config.beta,
                                                                  offset)
                # Each pair weighs the same whatever the split into micro-batches.
                weighted = losses if pair_weights is None else losses * pair_weights[batch_ids]
                (weighted.sum() / n_group).backward()
                margin = chosen_reward - rejected_reward
                stats += torch.stack([
                    losses.detach().sum(), (margin > 0).float().sum(), margin.sum(),
                    chosen_reward.sum(), rejected_reward.sum(),
                ])
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            epoch_lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            window.append((stats / n_group).tolist())
            if step % config.log_every == 0 or step == total:
                mean = torch.tensor(window).mean(0).tolist()
                history.append(DPOStepLog(step, *mean))
                window = []
                if progress:
                    bar.set_postfix_str(f"loss {mean[0]:.4f}, reward acc {mean[1]:.2f}")
        if on_epoch_end is not None:
            model.eval()
            on_epoch_end(epoch + 1, optimizer, sum(epoch_lrs) / max(1, len(epoch_lrs)))
            model.train()
    bar.close()
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    return DPOResult(history, step, len(encoded), list(encoded_pairs.skipped), time.perf_counter() - start)
