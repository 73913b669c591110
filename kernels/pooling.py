"""Masked mean pooling of residual-stream activations over response tokens.

Shapes: ``hidden`` [B, T, d] (fp32, fp16 or bf16), ``mask`` [B, T] (bool or 0/1 integers);
the result is [B, d] float32. Accumulation is always float32.

This module holds the torch references, which every faster backend is tested against, and the
public entry points, which dispatch to the Triton kernel (:mod:`headwater.kernels.pooling_triton`)
on CUDA tensors and to the torch reference elsewhere (torch's einsum is already a BLAS call on the
CPU; there is no C++ kernel for pooling). The fused variant
:func:`masked_mean_pool_diff` gives the pair vector pooled(chosen) - pooled(rejected) in one pass.
"""
from __future__ import annotations

import torch

from headwater.kernels import _dispatch


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


def _check_weights(hidden: torch.Tensor, mask: torch.Tensor, side: str = "") -> torch.Tensor:
    """The mask as float32 weights [B, T], after raising EmptyMaskError for empty rows."""
    _check_pool_inputs(hidden, mask)
    weights = mask.to(device=hidden.device, dtype=torch.float32)
    empty = (weights.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise EmptyMaskError(f"{side}response mask is empty for rows {empty}")
    return weights


def masked_mean_pool_diff_reference(
    hidden_chosen: torch.Tensor,
    mask_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    mask_rejected: torch.Tensor,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """pooled(chosen) - pooled(rejected) per pair, [B, d] float32 (each side as in
    :func:`masked_mean_pool_reference`); ``normalize`` divides the difference by its L2 norm."""
    _check_diff_inputs(hidden_chosen, mask_chosen, hidden_rejected, mask_rejected)
    diff = masked_mean_pool_reference(hidden_chosen, mask_chosen) - masked_mean_pool_reference(
        hidden_rejected, mask_rejected
    )
    return _l2_normalize(diff) if normalize else diff


def _check_diff_inputs(
    hidden_chosen: torch.Tensor,
    mask_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    mask_rejected: torch.Tensor,
) -> None:
    _check_pool_inputs(hidden_chosen, mask_chosen)
    _check_pool_inputs(hidden_rejected, mask_rejected)
    bc, _, dc = hidden_chosen.shape
    br, _, dr = hidden_rejected.shape
    if (bc, dc) != (br, dr):
        raise ValueError(
            f"hidden_chosen [B={bc}, T, d={dc}] and hidden_rejected [B={br}, T, d={dr}] "
            "must agree on B and d"
        )
    if hidden_chosen.device != hidden_rejected.device:
        raise ValueError(
            f"hidden_chosen is on {hidden_chosen.device} and hidden_rejected on {hidden_rejected.device}"
        )


def masked_mean_pool(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, d] over the positions where ``mask`` [B, T] is set: [B, d] float32.

    fp32 accumulation for fp32/fp16/bf16 input. ``normalize`` divides each row by its L2 norm (a
    zero row stays zero). ``backend``: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"``
    or ``"torch"``. See :func:`masked_mean_pool_reference` for the contract.

    Raises:
        EmptyMaskError: naming the rows whose mask selects no token.
    """
    chosen = _dispatch.resolve_backend(
        "masked_mean_pool", backend, hidden.device, available=("triton", "torch")
    )
    if chosen == "torch":
        return masked_mean_pool_reference(hidden, mask, normalize=normalize)
    from headwater.kernels.pooling_triton import masked_mean_pool_triton

    pooled = masked_mean_pool_triton(hidden, _check_weights(hidden, mask))
    # the [B, d] result is tiny next to the [B, T, d] read: normalising it in torch costs nothing
    return _l2_normalize(pooled) if normalize else pooled


def masked_mean_pool_diff(
    hidden_chosen: torch.Tensor,
    mask_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    mask_rejected: torch.Tensor,
    *,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The pair vector pooled(chosen) - pooled(rejected): [B, d] float32, one fused pass.

    Args:
        hidden_chosen: [B, Tc, d] activations of the chosen responses (fp32/fp16/bf16); may be a
            view such as ``hidden[:B]`` of one padded batch holding both sides.
        mask_chosen: [B, Tc] response mask of the chosen side.
        hidden_rejected: [B, Tr, d], same B, d and device.
        mask_rejected: [B, Tr].
        normalize: divide each difference by its L2 norm (a zero difference stays zero).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Raises:
        EmptyMaskError: naming the side and rows whose mask selects no token.
    """
    _check_diff_inputs(hidden_chosen, mask_chosen, hidden_rejected, mask_rejected)
    chosen = _dispatch.resolve_backend(
        "masked_mean_pool_diff", backend, hidden_chosen.device, available=("triton", "torch")
    )
    weights_c = _check_weights(hidden_chosen, mask_chosen, "chosen ")
    weights_r = _check_weights(hidden_rejected, mask_rejected, "rejected ")
    if chosen == "torch":
        return masked_mean_pool_diff_reference(
            hidden_chosen, weights_c, hidden_rejected, weights_r, normalize=normalize
        )
    from headwater.kernels.pooling_triton import masked_mean_pool_triton

    diff = masked_mean_pool_triton(hidden_chosen, weights_c, hidden_rejected, weights_r)
    return _l2_normalize(diff) if normalize else diff
