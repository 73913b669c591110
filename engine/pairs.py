"""Datapoint vectors of a batch of pairs, with the prompt shared by both sides encoded once.

Chosen and rejected of a pair share their prompt tokens exactly (``encode_pair`` takes the common
prefix). Running ``prompt + chosen`` and ``prompt + rejected`` separately computes the prompt
twice. Instead, with a KV cache:

1. the prompts of a batch run once, right-padded, [B, P], up to block ℓ; the cache keeps the keys
   and values of blocks 1..ℓ (nothing later runs);
2. the cache is duplicated along the batch (chosen rows first, then rejected rows) and the
   response tokens run against it, [2B, S], with their true positions ``p_i + j``; the attention
   mask is the prompt mask followed by the response mask, so a response attends to its own
   prompt tokens and to its own earlier tokens, never to padding.

Block ℓ's output on the response tokens is then what a separate forward of ``prompt + response``
gives (the same function of the same inputs, summed in a different order: equal within floating
point tolerance), and only ``p + c + r`` tokens are computed per pair instead of ``2p + c + r``.
Masked mean pooling and the chosen − rejected difference happen on the device.

This needs a base model that takes ``past_key_values`` and ``position_ids`` and attends by
positions, without a sliding window (a window counts cache slots, and padded prompts shift
slots against positions). :func:`supports_shared_prompt` checks the signature and config, and
then compares the two paths on a small synthetic batch; the engine falls back to separate
sequences where it fails.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Iterator, Sequence

import torch

from headwater.engine.models import LayerCapture, _base_model, forward_to_layer
from headwater.engine.tokenization import EncodedResponse, pad_batch
from headwater.kernels import masked_mean_pool_diff

LOG = logging.getLogger(__name__)

EncodedPair = tuple[EncodedResponse, EncodedResponse]


def shared_prompt_lengths(pair: EncodedPair) -> tuple[int, int]:
    """(prompt tokens, longest side's response tokens) of an encoded pair."""
    chosen, rejected = pair
    return chosen.prompt_length, max(chosen.response_length, rejected.response_length)


def pair_batches(
    prompt_lengths: Sequence[int], response_lengths: Sequence[int], max_tokens_per_batch: int, *, shared: bool
) -> Iterator[list[int]]:
    """Groups of pair indices whose forward passes each fit the token budget, with little padding.

    With ``shared`` a batch of n pairs runs [n, P] prompt tokens and then [2n, S] response
    tokens; both must fit: n·P ≤ budget and 2n·S ≤ budget. Without it, it runs [2n, P + S].

    Length bucketing in two keys: pairs are sorted by prompt length, cut into groups of about four
    budgets (so prompts in a group are alike), and each group is sorted by response length before
    it is cut into batches (so responses in a batch are alike too). A pair larger than the budget
    forms a batch of its own. The order depends only on the lengths: the same pairs always give
    the same batches (what makes a resumed run bit-identical).
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}")
    p, s = list(prompt_lengths), list(response_lengths)

    def cost(n: int, pmax: int, smax: int) -> int:
        return max(n * pmax, 2 * n * smax) if shared else 2 * n * (pmax + smax)

    order = sorted(range(len(p)), key=lambda i: (-p[i], -s[i], i))
    group: list[int] = []
    group_p = group_s = 0
    groups: list[list[int]] = []
    for i in order:
        gp, gs = max(group_p, p[i]), max(group_s, s[i])
        if group and cost(len(group) + 1, gp, gs) > 4 * max_tokens_per_batch:
            groups.append(group)
            group, gp, gs = [], p[i], s[i]
        group.append(i)
        group_p, group_s = gp, gs
    if group:
        groups.append(group)

    for group in groups:
        group.sort(key=lambda i: (-s[i], -p[i], i))
        batch: list[int] = []
        bp = bs = 0
        for i in group:
            np_, ns = max(bp, p[i]), max(bs, s[i])
            if batch and cost(len(batch) + 1, np_, ns) > max_tokens_per_batch:
                yield batch
                batch, np_, ns = [], p[i], s[i]
            batch.append(i)
            bp, bs = np_, ns
        if batch:
            yield batch


def _right_pad(rows: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and 0/1 mask (int64) for token rows of different lengths, right-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


@torch.inference_mode()
def pair_differences_shared(
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors ā(p, r⁺) − ā(p, r⁻) on the model's device, prompt run once.

    Every pair needs at least one prompt token (a fully padded prompt row would give the cache
    undefined values that the mask cannot hide).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    base = _base_model(model)
    n = len(pairs)
    prompt_lengths = [chosen.prompt_length for chosen, _ in pairs]
    if min(prompt_lengths) < 1:
        raise ValueError("pair_differences_shared needs at least one prompt token per pair")
    prompt_ids, prompt_mask = _right_pad(
        [chosen.input_ids[: chosen.prompt_length] for chosen, _ in pairs], pad_token_id, device
    )  # [B, P]

    capture = LayerCapture(model, layer, stop=True)
    cache = DynamicCache(config=model.config)
    with capture:
        base(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=cache, use_cache=True)

    # Chosen rows first, then rejected rows: the two halves are the two sides of the same pairs.
    shared_cache = DynamicCache(config=model.config)
    for index in range(capture.layer):
        cached = cache.layers[index]
        shared_cache.update(
            torch.cat([cached.keys, cached.keys]), torch.cat([cached.values, cached.values]), index
        )
    del cache
    responses = [side.input_ids[side.prompt_length :] for k in (0, 1) for side in (pair[k] for pair in pairs)]
    response_ids, response_mask = _right_pad(responses, pad_token_id, device)  # [2B, S]
    starts = torch.as_tensor(prompt_lengths * 2, dtype=torch.long, device=device)
    positions = starts[:, None] + torch.arange(response_ids.shape[1], device=device)[None, :]  # [2B, S]
    attention_mask = torch.cat([prompt_mask.repeat(2, 1), response_mask], dim=1)  # [2B, P + S]
    with capture:
        base(
            input_ids=response_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=shared_cache,
            use_cache=True,
        )
    hidden = capture.output  # [2B, S, d]: every real position is a response token
    return masked_mean_pool_diff(hidden[:n], response_mask[:n], hidden[n:], response_mask[n:])


@torch.inference_mode()
def pair_differences_separate(
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors, each side run as its own sequence (any architecture)."""
    device = next(model.parameters()).device
    n = len(pairs)
    batch = pad_batch([pair[0] for pair in pairs] + [pair[1] for pair in pairs], pad_token_id)  # [2B, T]
    hidden = forward_to_layer(
        model, batch.input_ids.to(device), batch.attention_mask.to(device), layer
    )  # [2B, T, d]
    mask = batch.response_mask.to(device)
    return masked_mean_pool_diff(hidden[:n], mask[:n], hidden[n:], mask[n:])


def _synthetic_pairs(vocab_size: int, special: set[int]) -> list[EncodedPair]:
    """A few pairs of ordinary token ids with different prompt and response lengths."""
    ordinary = [t for t in range(min(vocab_size, 512)) if t not in special] or list(range(vocab_size))

    def tokens(start: int, n: int) -> list[int]:
        return [ordinary[(start + 7 * j) % len(ordinary)] for j in range(n)]

    shapes = [(5, 4, 6), (2, 7, 3), (9, 1, 2)]  # (prompt, chosen, rejected) lengths
    pairs = []
    for k, (p, c, r) in enumerate(shapes):
        prompt = tokens(11 * k, p)
        pairs.append(
            (EncodedResponse(prompt + tokens(100 + k, c), p), EncodedResponse(prompt + tokens(200 + k, r), p))
        )
    return pairs


def supports_shared_prompt(model: Any, layer: int, *, pad_token_id: int) -> tuple[bool, str]:
    """Whether :func:`pair_differences_shared` is exact for this model, and why not if it is not.

    Checks that the base model takes ``past_key_values`` and ``position_ids`` and has no sliding
    window, then runs both paths on three synthetic pairs: the cosine of every shared vector with
    its separate twin must be above 0.999 (0.99 in half precision).
    """
    base = _base_model(model)
    params = inspect.signature(base.forward).parameters
    missing = [name for name in ("past_key_values", "position_ids") if name not in params]
    if missing:
        return False, f"{type(base).__name__}.forward takes no {', '.join(missing)}"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None) or []
    if any("sliding" in str(t) for t in layer_types) or (
        getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    ):
        return False, "the model attends within a sliding window"
    special = {t for t in (pad_token_id, getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None)) if isinstance(t, int)}
    pairs = _synthetic_pairs(int(config.vocab_size), special)
    try:
        shared = pair_differences_shared(model, pairs, layer, pad_token_id=pad_token_id).float().cpu()
    except Exception as err:  # noqa: BLE001 - any failure means: use separate sequences
        return False, f"a forward with a shared prompt cache failed ({type(err).__name__}: {err})"
    separate = pair_differences_separate(model, pairs, layer, pad_token_id=pad_token_id).float().cpu()
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    cosine = torch.nn.functional.cosine_similarity(shared, separate, dim=1)
    if not bool(torch.isfinite(shared).all()) or float(cosine.min()) < (0.99 if half else 0.999):
        return False, f"shared-prompt vectors differ from separate ones (min cosine {float(cosine.min()):.4f})"
    return True, "ok"
