"""Pieces shared by the trainers: seeding, length-bucketed batches, response log-probs, schedule."""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch

from headwater.engine.tokenization import PaddedBatch


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (the trainers use nothing else)."""
    random.seed(seed)
    torch.manual_seed(seed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, bucket: int = 32) -> list[list[int]]:
    """Shuffled batches of indices whose sequences have similar lengths (less padding).

    The indices are shuffled, cut into windows of ``bucket`` batches, sorted by length inside
    each window, cut into batches, and the batches shuffled again: every epoch differs, and the
    padding waste stays small without sorting the whole set.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def response_logps(model: torch.nn.Module, batch: PaddedBatch, *, average: bool = False) -> torch.Tensor:
    """Log-probability of each sequence's response tokens under ``model``.

    Args:
        model: a causal LM returning ``.logits`` [B, T, V].
        batch: right-padded ids [B, T] with the response mask [B, T].
        average: divide by the number of response tokens (length normalisation).

    Returns:
        [B] float32: sum (or mean) over response positions t of log p(x_t | x_<t).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # Position t predicts token t+1.
    logits = logits[:, :-1].float()  # [B, T-1, V]
    targets = batch.input_ids[:, 1:]  # [B, T-1]
    mask = batch.response_mask[:, 1:].to(logits.dtype)  # [B, T-1]
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    total = (token_logps * mask).sum(-1)
    if average:
        total = total / mask.sum(-1).clamp(min=1)
    return total


def linear_warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate over ``warmup_steps``, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)
