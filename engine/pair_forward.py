"""Datapoint vectors of a batch of pairs, with the prompt shared by both sides encoded once.

Chosen and rejected of a pair share their prompt tokens exactly (``encode_pair`` takes the common
prefix). Running ``prompt + chosen`` and ``prompt + rejected`` separately computes the prompt
twice. Two ways compute it once, both exact (the same function of the same inputs, summed in a
different order, so equal within floating-point tolerance):

``"packed"`` (preferred): one row per pair, ``prompt + chosen + rejected``, with the rejected
    tokens placed at positions ``p, p+1, ...`` again and a 4-D attention mask that is causal but
    hides the chosen tokens from the rejected ones::

                 prompt  chosen  rejected       (query rows, key columns; x = may attend)
        prompt   causal    .        .
        chosen     x     causal     .
        rejected   x       .      causal

    Each row is ``p + c + r`` tokens and rows are bucketed by that one length, so padding stays
    small (about 3% on 1,000 pairs with an 8k budget, against 25% for the KV-cache layout below
    where the two sides of a pair must share a padded width). Needs the ``sdpa`` or ``eager``
    attention of transformers (they take a ready 4-D mask); on the CPU, ``sdpa`` runs in query
    chunks that skip the keys a causal mask hides (:mod:`headwater.engine.attention`).
``"kv_cache"``: the prompts of a batch run once, right-padded, [B, P], up to block ℓ, keeping
    the keys and values of blocks 1..ℓ; the cache is duplicated along the batch (chosen rows, then
    rejected rows) and the response tokens run against it, [2B, S], at positions ``p_i + j``, with
    the prompt mask followed by the response mask. Works with any attention that takes a cache and
    position ids.

Either way only ``p + c + r`` tokens are computed per pair instead of ``2p + c + r``, and masked
mean pooling and the chosen − rejected difference happen on the device. Neither fits a model that
attends within a sliding window (a window counts slots, and packing or padding shifts slots
against positions). :func:`prompt_sharing_mode` checks signature and config and then compares each
way with separate sequences on a small synthetic batch; the engine uses the first that passes, or
separate sequences.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from array import array
from typing import Any, Iterator, Sequence

import torch

from headwater.engine.attention import chunked_causal_attention
from headwater.engine.models import LayerCapture, base_model, forward_to_layer
from headwater.engine.tokenization import EncodedResponse, pad_batch, round_up
from headwater.kernels import masked_mean_pool, masked_mean_pool_diff

LOG = logging.getLogger(__name__)

EncodedPair = tuple[EncodedResponse, EncodedResponse]


MODES = ("packed", "kv_cache", "separate")


class PairTokens:
    """The token ids of many pairs in flat int32 buffers, for a shard waiting for the model.

    A list of Python ints costs about 36 bytes a token (an 8-byte pointer and a 28-byte int object
    for every id above 256), a flat ``array("i")`` 4; a tokenised shard of 4,096 pairs is then
    about 3 MiB instead of about 30. Per pair the buffer holds the chosen side (prompt + response)
    followed by the rejected response: the prompt tokens of the two sides are the same (see
    :func:`~headwater.engine.tokenization.encode_pair`) and are stored once. :meth:`pairs` rebuilds
    :data:`EncodedPair` objects for one batch at a time.
    """

    def __init__(self) -> None:
        self.tokens = array("i")
        self.offsets = array("q", [0])  # pair i is tokens[offsets[i]:offsets[i + 1]]
        self.prompt_lengths = array("i")
        self.chosen_lengths = array("i")  # response tokens only
        self.rejected_lengths = array("i")
        self._truncated = array("b")  # bit 0: chosen truncated, bit 1: rejected truncated

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (the flat token ids and five numbers a pair)."""
        buffers = (self.tokens, self.offsets, self.prompt_lengths, self.chosen_lengths, self.rejected_lengths, self._truncated)
        return sum(len(b) * b.itemsize for b in buffers)

    def append(self, chosen: EncodedResponse, rejected: EncodedResponse) -> None:
        """Add one pair; the two sides must share their prompt tokens exactly."""
        p = chosen.prompt_length
        if rejected.prompt_length != p or chosen.input_ids[:p] != rejected.input_ids[:p]:
            raise ValueError("chosen and rejected of a pair must start with the same prompt tokens")
        self.tokens.extend(chosen.input_ids)
        self.tokens.extend(rejected.input_ids[p:])
        self.offsets.append(len(self.tokens))
        self.prompt_lengths.append(p)
        self.chosen_lengths.append(chosen.response_length)
        self.rejected_lengths.append(rejected.response_length)
        self._truncated.append(int(chosen.truncated) | 2 * int(rejected.truncated))

    def n_tokens(self, indices: Sequence[int] | None = None) -> int:
        """Tokens of prompt + response over both sides (the prompt counted twice, as two
        sequences would have it) of the pairs at ``indices`` (default: all)."""
        rows = range(len(self)) if indices is None else indices
        return sum(2 * self.prompt_lengths[i] + self.chosen_lengths[i] + self.rejected_lengths[i] for i in rows)

    def pair(self, index: int) -> EncodedPair:
        """(chosen, rejected) of pair ``index`` as :class:`EncodedResponse` objects."""
        start, p, c = self.offsets[index], self.prompt_lengths[index], self.chosen_lengths[index]
        chosen = self.tokens[start : start + p + c].tolist()
        rejected = chosen[:p] + self.tokens[start + p + c : self.offsets[index + 1]].tolist()
        flags = self._truncated[index]
        return EncodedResponse(chosen, p, bool(flags & 1)), EncodedResponse(rejected, p, bool(flags & 2))

    def pairs(self, indices: Sequence[int]) -> list[EncodedPair]:
        """The pairs at ``indices``, in that order (one batch)."""
        return [self.pair(i) for i in indices]


def pair_batches(
    prompt_lengths: Sequence[int],
    chosen_lengths: Sequence[int],
    rejected_lengths: Sequence[int],
    max_tokens_per_batch: int,
    *,
    mode: str,
    pad_multiple: int = 1,
) -> Iterator[list[int]]:
    """Groups of pair indices whose forward passes each fit the token budget, with little padding.

    Per ``mode`` a batch of n pairs runs:

    - ``"packed"``: [n, T] with T the longest ``p + c + r``; n·T ≤ budget. Pairs are sorted by
      ``p + c + r``.
    - ``"separate"``: [2n, T] with T the longest ``p + max(c, r)``; 2n·T ≤ budget; sorted by it.
    - ``"kv_cache"``: [n, P] prompt tokens, then [2n, S] response tokens; n·P ≤ budget and
      2n·S ≤ budget. Two keys: pairs sorted by prompt length are cut into groups of about four
      budgets, and each group is sorted by response length before it is cut into batches.

    Widths (T, P, S) count as padded up to a multiple of ``pad_multiple``, as the forward
    functions pad them. A pair larger than the budget forms a batch of its own. Batches depend
    only on the lengths: the same pairs always give the same batches (what makes a resumed run
    bit-identical).
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be positive, got {pad_multiple}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    m = pad_multiple
    p, c, r = list(prompt_lengths), list(chosen_lengths), list(rejected_lengths)
    s = [max(a, b) for a, b in zip(c, r)]
    if mode != "kv_cache":
        width = [p[i] + c[i] + r[i] for i in range(len(p))] if mode == "packed" else [p[i] + s[i] for i in range(len(p))]
        rows = 1 if mode == "packed" else 2
        batch: list[int] = []
        for i in sorted(range(len(p)), key=lambda i: (-width[i], i)):
            # sorted longest first: the first index of a batch sets its width
            if batch and rows * (len(batch) + 1) * round_up(width[batch[0]], m) > max_tokens_per_batch:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch
        return

    def cost(n: int, pmax: int, smax: int) -> int:
        return max(n * round_up(pmax, m), 2 * n * round_up(smax, m))

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
        batch = []
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


def _right_pad(
    rows: Sequence[Sequence[int]], pad_token_id: int, device: torch.device, pad_multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and 0/1 mask (int64) for token rows of different lengths, right-padded to the
    longest row rounded up to a multiple of ``pad_multiple``."""
    width = round_up(max(len(r) for r in rows), pad_multiple)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def _attention_implementation(model: Any) -> str:
    config = model.config
    return str(getattr(config, "_attn_implementation", None) or getattr(config, "attn_implementation", None) or "eager")


@torch.inference_mode()
def pair_differences_packed(
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int, pad_multiple: int = 1
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors on the model's device, one packed row per pair.

    Row b is ``prompt + chosen + rejected`` (right-padded); see the module docstring for the
    positions and the mask. Needs ``sdpa`` or ``eager`` attention.
    """
    device = next(model.parameters()).device
    implementation = _attention_implementation(model)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"packed pairs need sdpa or eager attention, the model uses {implementation!r}")
    rows = [chosen.input_ids + rejected.input_ids[rejected.prompt_length :] for chosen, rejected in pairs]
    ids, _ = _right_pad(rows, pad_token_id, device, pad_multiple)  # [B, T]
    width = ids.shape[1]
    p = torch.as_tensor([chosen.prompt_length for chosen, _ in pairs], device=device)[:, None]  # [B, 1]
    chosen_end = p + torch.as_tensor([c.response_length for c, _ in pairs], device=device)[:, None]
    rejected_end = chosen_end + torch.as_tensor([r.response_length for _, r in pairs], device=device)[:, None]
    column = torch.arange(width, device=device)[None, :]  # [1, T]
    in_chosen = (column >= p) & (column < chosen_end)  # [B, T]
    in_rejected = (column >= chosen_end) & (column < rejected_end)  # [B, T]
    # rejected tokens continue the prompt at position p; padding gets 0 (no real token sees it)
    positions = torch.where(in_rejected, column - (chosen_end - p), column)
    positions = torch.where(column < rejected_end, positions, 0)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # [T, T]
    allowed = causal[None] & ~(in_rejected[:, :, None] & in_chosen[:, None, :])  # [B, T(query), T(key)]
    mask = allowed[:, None]  # [B, 1, T, T]; padding rows see earlier slots, so nothing is NaN
    if implementation == "eager":  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)

    capture = LayerCapture(model, layer, stop=True)
    # On the CPU, sdpa attention skips the keys after each chunk of queries (the mask is causal).
    chunking = chunked_causal_attention(model) if device.type == "cpu" else contextlib.nullcontext()
    with chunking, capture:
        base_model(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    hidden = capture.output  # [B, T, d]
    return masked_mean_pool_diff(hidden, in_chosen, hidden, in_rejected)


@torch.inference_mode()
def pair_differences_kv_cache(
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int, pad_multiple: int = 1
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors ā(p, r⁺) − ā(p, r⁻) on the model's device, prompt run once.

    Every pair needs at least one prompt token (a fully padded prompt row would give the cache
    undefined values that the mask cannot hide).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    base = base_model(model)
    n = len(pairs)
    prompt_lengths = [chosen.prompt_length for chosen, _ in pairs]
    if min(prompt_lengths) < 1:
        raise ValueError("pair_differences_kv_cache needs at least one prompt token per pair")
    prompt_ids, prompt_mask = _right_pad(
        [chosen.input_ids[: chosen.prompt_length] for chosen, _ in pairs], pad_token_id, device, pad_multiple
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
    response_ids, response_mask = _right_pad(responses, pad_token_id, device, pad_multiple)  # [2B, S]
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
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int, pad_multiple: int = 1
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors, each side run as its own sequence (any architecture)."""
    device = next(model.parameters()).device
    n = len(pairs)
    batch = pad_batch(
        [pair[0] for pair in pairs] + [pair[1] for pair in pairs], pad_token_id, pad_multiple=pad_multiple
    )  # [2B, T]
    hidden = forward_to_layer(
        model, batch.input_ids.to(device), batch.attention_mask.to(device), layer
    )  # [2B, T, d]
    mask = batch.response_mask.to(device)
    return masked_mean_pool_diff(hidden[:n], mask[:n], hidden[n:], mask[n:])


# A pair whose packed row (prompt + both responses) is longer than this runs on its own, each side
# as one unpadded sequence: attention then needs no mask (causal sdpa), so memory stays linear in
# the row's length instead of a [T, T] mask (10 GB for one 100,000-token row).
LONG_ROW_TOKENS = 4096


def is_long(prompt_length: int, chosen_length: int, rejected_length: int) -> bool:
    """Whether a pair (lengths in tokens; responses without the prompt) takes the long-row path."""
    return prompt_length + chosen_length + rejected_length > LONG_ROW_TOKENS


@torch.inference_mode()
def pair_differences_long(
    model: Any, pairs: Sequence[EncodedPair], layer: int, *, pad_token_id: int, pad_multiple: int = 1
) -> torch.Tensor:
    """[B, d] float32 datapoint vectors, each side of each pair run alone and unpadded (no
    attention mask at all: memory linear in the sequence length). For pairs too long to pack."""
    device = next(model.parameters()).device
    out = []
    for pair in pairs:
        pooled = []
        for side in pair:
            ids = torch.tensor([side.input_ids], dtype=torch.long, device=device)  # [1, T]
            hidden = forward_to_layer(model, ids, torch.ones_like(ids), layer)  # [1, T, d]
            mask = torch.zeros_like(ids)
            mask[:, side.prompt_length :] = 1
            pooled.append(masked_mean_pool(hidden, mask))  # [1, d] float32
        out.append(pooled[0] - pooled[1])
    return torch.cat(out)


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


FORWARDS = {
    "packed": pair_differences_packed,
    "kv_cache": pair_differences_kv_cache,
    "separate": pair_differences_separate,
    "long": pair_differences_long,
}


def check_mode(model: Any, layer: int, mode: str, *, pad_token_id: int) -> tuple[bool, str]:
    """Whether ``mode`` gives the vectors of separate sequences on this model, and why not.

    Runs ``mode`` and separate sequences on three synthetic pairs: every vector must be finite and
    its cosine with its separate twin above 0.999 (0.99 in half precision).
    """
    base = base_model(model)
    params = inspect.signature(base.forward).parameters
    needed = ("position_ids",) if mode == "packed" else ("past_key_values", "position_ids")
    missing = [name for name in needed if name not in params]
    if missing:
        return False, f"{type(base).__name__}.forward takes no {', '.join(missing)}"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None) or []
    if any("sliding" in str(t) for t in layer_types) or (
        getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    ):
        return False, "the model attends within a sliding window"
    if mode == "packed" and _attention_implementation(model) not in ("sdpa", "eager"):
        return False, f"packed pairs need sdpa or eager attention, not {_attention_implementation(model)!r}"
    special = {t for t in (pad_token_id, getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None))
               if isinstance(t, int)}
    pairs = _synthetic_pairs(int(config.vocab_size), special)
    try:
        shared = FORWARDS[mode](model, pairs, layer, pad_token_id=pad_token_id).float().cpu()
    except Exception as err:  # noqa: BLE001 - any failure means: do not use this mode
        return False, f"the {mode} forward failed ({type(err).__name__}: {err})"
    separate = pair_differences_separate(model, pairs, layer, pad_token_id=pad_token_id).float().cpu()
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    cosine = torch.nn.functional.cosine_similarity(shared, separate, dim=1)
    if not bool(torch.isfinite(shared).all()) or float(cosine.min()) < (0.99 if half else 0.999):
        return False, f"{mode} vectors differ from separate ones (min cosine {float(cosine.min()):.4f})"
    return True, "ok"


def prompt_sharing_mode(model: Any, layer: int, *, pad_token_id: int) -> tuple[str, list[str]]:
    """The first of ``"packed"``, ``"kv_cache"`` that passes :func:`check_mode`, else
    ``"separate"``; with the reasons the others were passed over."""
    reasons = []
    for mode in ("packed", "kv_cache"):
        ok, reason = check_mode(model, layer, mode, pad_token_id=pad_token_id)
        if ok:
            return mode, reasons
        reasons.append(f"{mode}: {reason}")
    return "separate", reasons
