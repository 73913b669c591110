"""Residual-stream capture: mean activation at layer ℓ over the response tokens of many sequences.

ā⁽ℓ⁾(p, r; M) of method.md §1: the model runs teacher-forced on prompt + response, only up to
decoder block ℓ, and the block's output is averaged over the response tokens on the device.
Only the pooled [d] vectors leave the device.

Sequences are batched by a token budget after sorting by length, so that rows of a batch have
similar lengths and little compute is spent on padding; results come back in input order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from headwater.engine.models import forward_to_layer
from headwater.engine.tokenization import (
    EncodedResponse,
    TokenizationSettings,
    encode_pairs,
    encode_response,
    pad_batch,
)
from headwater.kernels import masked_mean_pool

DEFAULT_MAX_TOKENS_PER_BATCH = 16384


def length_bucketed_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> Iterator[list[int]]:
    """Groups of indices, longest first, whose padded size (rows × longest row) fits the budget.

    A single sequence longer than the budget forms a batch of its own.
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]  # the first index is the longest
        if batch and (len(batch) + 1) * width > max_tokens_per_batch:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def pool_responses(
    model: Any,
    encoded: Sequence[EncodedResponse],
    layer: int,
    *,
    pad_token_id: int,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Mean layer-``layer`` activation over each sequence's response tokens.

    Args:
        model: a transformers causal LM (already on its device, in eval mode).
        encoded: N encoded (prompt, response) sequences.
        layer: 1-based decoder block ℓ (see :func:`headwater.engine.models.resolve_layer`).
        pad_token_id: id used for right padding (never attended to, never pooled).
        max_tokens_per_batch: the padded token budget of one forward pass.
        progress: called with the number of sequences finished after each batch.

    Returns:
        [N, d] float32 on the CPU, in the order of ``encoded``.
    """
    device = next(model.parameters()).device
    out: torch.Tensor | None = None
    lengths = [len(e.input_ids) for e in encoded]
    for batch_index in length_bucketed_batches(lengths, max_tokens_per_batch):
        batch = pad_batch([encoded[i] for i in batch_index], pad_token_id)
        hidden = forward_to_layer(
            model, batch.input_ids.to(device), batch.attention_mask.to(device), layer
        )  # [B, T, d]
        pooled = masked_mean_pool(hidden, batch.response_mask.to(device)).cpu()  # [B, d] fp32
        if out is None:
            out = torch.empty((len(encoded), pooled.shape[1]), dtype=torch.float32)
        out[torch.tensor(batch_index)] = pooled
        if progress is not None:
            progress(len(batch_index))
    if out is None:
        raise ValueError("pool_responses needs at least one sequence")
    return out


@dataclass
class PairActivations:
    """Pooled activations of the kept pairs of a dataset.

    Attributes:
        chosen: [n_kept, d] float32, ā(p, r⁺).
        rejected: [n_kept, d] float32, ā(p, r⁻).
        kept: positions (in the input sequence) of the pairs that were encoded.
        skipped: (position, reason) of the pairs that were not.
        n_truncated: kept pairs with at least one side truncated to ``max_length``.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    kept: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    n_truncated: int = 0

    @property
    def differences(self) -> torch.Tensor:
        """[n_kept, d] float32 datapoint vectors v_d = ā(p, r⁺) − ā(p, r⁻)."""
        return self.chosen - self.rejected


def pair_activations(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    layer: int,
    settings: TokenizationSettings = TokenizationSettings(),
    *,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
    progress: Callable[[int], None] | None = None,
) -> PairActivations:
    """Pooled chosen and rejected activations for every pair that can be encoded.

    Pairs that cannot be encoded (over-long under ``"skip"``, empty responses) are listed in
    ``skipped`` with their reason; ``progress`` counts sequences (two per pair).
    """
    enc = encode_pairs(tokenizer, pairs, settings)
    if not enc.encoded:
        raise ValueError(f"no pair could be encoded; reasons: {enc.skipped[:5]}")
    flat = [e for chosen_rejected in enc.encoded for e in chosen_rejected]  # c0, r0, c1, r1, ...
    pooled = pool_responses(
        model, flat, layer, pad_token_id=pad_token_id_of(tokenizer), max_tokens_per_batch=max_tokens_per_batch,
        progress=progress,
    )
    return PairActivations(pooled[0::2], pooled[1::2], enc.kept, enc.skipped, enc.n_truncated)


def response_activations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    responses: Sequence[Any],
    layer: int,
    settings: TokenizationSettings = TokenizationSettings(),
    *,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> torch.Tensor:
    """[N, d] float32 ā(p_i, r_i) for aligned prompts and responses (behaviour and probe vectors).

    Raises a :class:`~headwater.engine.tokenization.TokenizationError` naming the response that
    cannot be encoded (an over-long behaviour response is an error, never silently dropped).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encoded = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        try:
            encoded.append(encode_response(tokenizer, p, r, settings))
        except ValueError as err:
            raise type(err)(f"response {i}: {err}") from None
    return pool_responses(
        model, encoded, layer, pad_token_id=pad_token_id_of(tokenizer), max_tokens_per_batch=max_tokens_per_batch
    )


@dataclass
class ResponseTokens:
    """Layer-ℓ activations of every response token of some sequences, concatenated.

    Attributes:
        activations: [n_tokens, d] float32 on the CPU, sequence after sequence in input order.
        lengths: response tokens per sequence (their sum is n_tokens).
        token_ids: [n_tokens] int64, the response tokens themselves (for highlights).
        prompt_means: [n_sequences, d] float32, the mean activation over each sequence's prompt
            tokens (zeros for an empty prompt): a representation of the prompt from the same pass.
    """

    activations: torch.Tensor
    lengths: list[int]
    token_ids: torch.Tensor
    prompt_means: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        """One [length, d] view per sequence."""
        return list(self.activations.split(self.lengths))


@torch.no_grad()
def response_token_activations(
    model: Any,
    encoded: Sequence[EncodedResponse],
    layer: int,
    *,
    pad_token_id: int,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> ResponseTokens:
    """Block-ℓ output at each response token of each sequence (token-level, not pooled).

    What sparse autoencoders train on and encode. Batched by the token budget after sorting by
    length, like :func:`pool_responses`; rows come back in the order of ``encoded``. Memory is
    that of the response tokens of these sequences: callers stream a dataset in chunks.
    """
    if not encoded:
        raise ValueError("response_token_activations needs at least one sequence")
    device = next(model.parameters()).device
    per_sequence: list[torch.Tensor | None] = [None] * len(encoded)
    prompt_means: list[torch.Tensor | None] = [None] * len(encoded)
    lengths = [len(e.input_ids) for e in encoded]
    for batch_index in length_bucketed_batches(lengths, max_tokens_per_batch):
        batch = pad_batch([encoded[i] for i in batch_index], pad_token_id)
        hidden = forward_to_layer(model, batch.input_ids.to(device), batch.attention_mask.to(device), layer)
        mask = batch.response_mask.to(device)
        for row, i in enumerate(batch_index):
            per_sequence[i] = hidden[row][mask[row]].float().cpu()  # [response_length, d]
            prompt = hidden[row, :encoded[i].prompt_length].float()
            prompt_means[i] = prompt.mean(dim=0).cpu() if prompt.shape[0] else torch.zeros(hidden.shape[-1])
    token_ids = [torch.tensor(e.input_ids[e.prompt_length:], dtype=torch.long) for e in encoded]
    return ResponseTokens(
        torch.cat(per_sequence),  # type: ignore[arg-type]
        [e.response_length for e in encoded],
        torch.cat(token_ids),
        torch.stack(prompt_means),  # type: ignore[arg-type]
    )


def pad_token_id_of(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    return int(pad)
