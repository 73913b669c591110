"""Causal attention computed in query chunks, each against only the keys it can see.

The packed rows of :func:`headwater.engine.pair_forward.pair_differences_packed` carry a ready 4-D mask
(causal, and rejected tokens blind to chosen ones), so transformers' ``sdpa`` attention hands it
to ``torch.nn.functional.scaled_dot_product_attention``, which computes every query against every
key and masks afterwards: the CPU flash kernel splits the keys into blocks of 512, longer than a
typical row, so the causal half is never skipped. Splitting the queries into chunks of
:data:`QUERY_CHUNK` rows and giving chunk ``[a, b)`` only the keys ``[0, b)`` skips the keys
after the chunk, which a causal mask hides anyway: the same function of the same inputs, equal
within floating-point rounding.

On SmolLM2-135M (rows of 130-230 tokens, bf16, two CPU threads) attention takes about a fifth of
the engine's time (``python bench/profile_encode.py``); chunks of 64 rows take 0.77 of the
whole-row time (``python bench/attention_cpu.py``).
Only used on the CPU: on GPUs it has not been measured.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch

CHUNKED_SDPA = "headwater_chunked_sdpa"
QUERY_CHUNK = 64  # query rows per chunk; 32 / 64 / 96 took 0.71 / 0.77 / 0.85 of whole rows (attention_cpu.py)


def chunked_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, one chunk of query rows at a time.

    Args:
        query: [B, H, T, D]; key, value: [B, H_kv, T, D] (no cache: queries and keys are the
            same T positions).
        attention_mask: [B, 1, T, T] bool or additive mask that is causal (query i never sees
            key j > i); the chunking relies on it.

    Returns:
        ([B, T, H, D] attention output, None), as transformers' attention functions return.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    width = query.shape[2]
    if attention_mask is None or key.shape[2] != width or width <= QUERY_CHUNK:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    outputs = []
    for start in range(0, width, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, width)
        out, _ = sdpa_attention_forward(
            module, query[:, :, start:stop], key[:, :, :stop], value[:, :, :stop],
            attention_mask[:, :, start:stop, :stop], *args, **kwargs,
        )
        outputs.append(out)  # [B, stop - start, H, D]
    return torch.cat(outputs, dim=1), None


@functools.cache
def _register() -> None:
    """Add :func:`chunked_sdpa_attention` to transformers' attention functions (once)."""
    from transformers import AttentionInterface

    AttentionInterface.register(CHUNKED_SDPA, chunked_sdpa_attention)


@contextlib.contextmanager
def chunked_causal_attention(model: Any) -> Iterator[None]:
    """Within the block, a model on ``sdpa`` attention uses :func:`chunked_sdpa_attention`.

    The caller must pass a causal 4-D mask. Other attention implementations are left alone; the
    model's own setting is restored on exit, also after an exception.
    """
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = CHUNKED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
