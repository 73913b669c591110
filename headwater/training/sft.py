"""Supervised fine-tuning with the loss on response tokens only (how the organism's M0 is made)."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from headwater.engine.tokenization import TokenizationSettings, encode_response, pad_batch
from headwater.training.common import (
    bucketed_batches,
    linear_warmup_schedule,
    seed_everything,
    warmup_steps_for,
)

LOG = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Hyper-parameters of :func:`train_sft`.

    Attributes:
        epochs: passes over the examples.
        lr: peak learning rate of AdamW.
        batch_size: examples per optimiser step.
        warmup_ratio: fraction of the steps spent warming the rate up linearly from 0; then it
            decays linearly to 0.
        weight_decay: AdamW's decoupled weight decay.
        max_grad_norm: gradient clipping norm (None: no clipping).
        seed: seeds batching order and torch.
        settings: how (prompt, response) becomes tokens; the loss covers response tokens only.
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    settings: TokenizationSettings = field(default_factory=lambda: TokenizationSettings(format="raw"))

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"`epochs` must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class SFTResult:
    """What :func:`train_sft` did: the mean response-token loss of every step, and its time."""

    losses: list[float]
    seconds: float


def train_sft(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[tuple[Any, Any]],
    config: SFTConfig = SFTConfig(),
    *,
    progress: bool = False,
) -> SFTResult:
    """Fine-tune ``model`` in place on (prompt, response) examples, loss on response tokens only.

    The loss of a batch is the mean cross-entropy over all its response tokens (the EOS token
    included when ``settings.add_eos``), as TRL's SFT does with ``completion_only_loss``.

    Args:
        model: a transformers causal LM (trained in place, left in eval mode).
        tokenizer: its tokenizer; ``pad_token_id`` must be set.
        examples: (prompt, response) pairs, raw strings or message lists.
        config: the hyper-parameters.
        progress: a progress bar (steps, step rate, time left, loss) on stderr.
    """
    if not examples:
        raise ValueError("train_sft needs at least one example")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    start = time.perf_counter()
    seed_everything(config.seed)
    encoded = [encode_response(tokenizer, p, r, config.settings) for p, r in examples]
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = linear_warmup_schedule(optimizer, warmup_steps_for(total, config.warmup_ratio), total)
    lengths = [len(e.input_ids) for e in encoded]
    losses: list[float] = []
    bar = tqdm(total=total, desc="SFT", unit="step", disable=not progress, leave=False)
    model.train()
    for epoch in range(config.epochs):
        for batch_ids in bucketed_batches(lengths, config.batch_size, rng):
            batch = pad_batch([encoded[i] for i in batch_ids], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            # Position t predicts token t+1; only response tokens count.
            mask = batch.response_mask[:, 1:]  # [B, T-1]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask].float(), batch.input_ids[:, 1:][mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            if progress and len(losses) % 50 == 0:
                bar.set_postfix_str(f"epoch {epoch + 1}, loss {losses[-1]:.4f}")
    bar.close()
    model.eval()
    return SFTResult(losses, time.perf_counter() - start)
