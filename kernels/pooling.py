"""Masked mean pooling of residual-stream activations over response tokens.

Shapes: ``hidden`` [B, T, d] (fp32, fp16 or bf16), ``mask`` [B, T] (bool or 0/1 integers);
the result is [B, d] float32. Accumulation is always float32.

This module holds the torch reference, which every faster backend is tested against.
"""
from __future__ import annotations

import torch


class EmptyMaskError(ValueError):
    """A row of the response mask selects no token, so its mean is undefined."""


def _check_pool_inputs(hidden: torch.Tensor, mask: torch.Tensor) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, d], got shape {tuple(hidden.shape)}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask must be [B, T] = {tuple(hidden.shape[:2])}, got shape {tuple(mask.shape)}"
        )


def masked_mean_pool_reference(
    hidden: torch.Tensor, mask: torch.Tensor, *, normalize: bool = False
) -> torch.Tensor:
    """Mean of ``hidden`` over the positions where ``mask`` is set, per row.

    Args:
        hidden: [B, T, d] activations, fp32/fp16/bf16.
        mask: [B, T] bool or 0/1; which positions are response tokens.
        normalize: divide each pooled row by its L2 norm (a zero row stays zero).

    Returns:
        [B, d] float32.

    Raises:
        EmptyMaskError: naming the rows whose mask is empty (their mean would be NaN).
    """
    _check_pool_inputs(hidden, mask)
    weights = mask.to(torch.float32)
    counts = weights.sum(dim=1)  # [B]
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise EmptyMaskError(f"response mask is empty for rows {empty}")
    pooled = torch.einsum("btd,bt->bd", hidden.to(torch.float32), weights) / counts[:, None]
    if normalize:
        pooled = _l2_normalize(pooled)
    return pooled


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; zero rows stay zero instead of becoming NaN."""
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), x)


def masked_mean_pool(
    hidden: torch.Tensor, mask: torch.Tensor, *, normalize: bool = False
) -> torch.Tensor:
    """Public entry point; see :func:`masked_mean_pool_reference` for the contract."""
    return masked_mean_pool_reference(hidden, mask, normalize=normalize)
