"""Editing the residual stream at block ℓ while a model runs: the feature interventions of the
concept audit (method.md §6, step 4) during DPO.

- ``project``: the span of the given directions is removed from block ℓ's output at every
  position, h ← h − U Uᵀ h with U an orthonormal basis of the directions (suppress a concept: the
  model cannot use, and so cannot learn to rely on, that part of the stream);
- ``add``: ``scale`` × the sum of the unit directions is added at every position (amplify).

Training applies the same edit to the policy and the frozen reference, so at the start the two
agree exactly and DPO's margins start at zero, as without an edit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from headwater.engine.models import decoder_blocks, resolve_layer

EDIT_MODES = ("project", "add")


@dataclass(frozen=True)
class ResidualEdit:
    """An edit of block ``layer``'s output.

    Attributes:
        layer: 1-based block ℓ (negative from the end).
        directions: [m, d] float directions (an SAE concept's decoder rows).
        mode: ``"project"`` or ``"add"``.
        scale: the added multiple for ``"add"``.
    """

    layer: int
    directions: torch.Tensor
    mode: str = "project"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(f"mode must be one of {EDIT_MODES}, got {self.mode!r}")
        if self.directions.dim() != 2 or self.directions.shape[0] < 1:
            raise ValueError(f"directions must be [m ≥ 1, d], got {tuple(self.directions.shape)}")
        if not torch.isfinite(self.directions).all():
            raise ValueError("directions hold inf or NaN")

    def basis(self) -> torch.Tensor:
        """[d, r] orthonormal basis of the directions' span (r = their rank), float64."""
        q, r = torch.linalg.qr(self.directions.double().T)
        keep = r.diagonal().abs() > 1e-10 * r.diagonal().abs().max().clamp_min(1e-300)
        return q[:, keep]

    def shift(self) -> torch.Tensor:
        """[d] the vector ``add`` adds: scale × the sum of the unit directions."""
        unit = torch.nn.functional.normalize(self.directions.double(), dim=1)
        return self.scale * unit.sum(dim=0)


@contextlib.contextmanager
def edited_residual(model: torch.nn.Module, edit: ResidualEdit | None) -> Iterator[None]:
    """Apply ``edit`` to ``model``'s block-ℓ output inside the ``with`` block (no-op for None)."""
    if edit is None:
        yield
        return
    hidden = model.config.hidden_size
    if edit.directions.shape[1] != hidden:
        raise ValueError(f"directions are {edit.directions.shape[1]}-dimensional, the model's stream {hidden}")
    block = decoder_blocks(model)[resolve_layer(model, edit.layer) - 1]
    param = next(model.parameters())
    basis = edit.basis().to(param.device, param.dtype)  # [d, r]
    shift = edit.shift().to(param.device, param.dtype)

    def change(h: torch.Tensor) -> torch.Tensor:
        if edit.mode == "project":
            return h - (h @ basis) @ basis.T
        return h + shift

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (change(output[0]),) + tuple(output[1:])
        return change(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["EDIT_MODES", "ResidualEdit", "edited_residual"]
