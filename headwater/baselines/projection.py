"""A seeded sparse random projection (a block count sketch, Kane & Nelson's sparse JL transform).

The gradient baseline projects per-pair gradients of millions of LoRA weights to a few thousand
dimensions. A dense Gaussian matrix of that size (P × 8,192 float32: 80 GB for SmolLM2's LoRA
weights) cannot be stored, and regenerating it block by block costs P × k multiply-adds per
gradient. This projection needs P × s indices and signs and s × P adds per gradient:

    the k outputs are cut into s blocks of k / s; coordinate j of parameter ``name`` lands in
    block b at position h_b(j) with sign σ_b(j) ∈ {−1, +1}, scaled by 1/√s.

It is linear, E[⟨Rx, Ry⟩] = ⟨x, y⟩ for any x, y, and with s ≥ 2 blocks the variance of that
estimate falls like 1/k (each block is an independent count sketch). The hashes of a parameter
come from a generator seeded by (seed, parameter name, its size): the same seed gives the same
projection in every process, on every machine, in any order of calls.
"""
from __future__ import annotations

import hashlib
import math

import torch


class SparseProjection:
    """R: the concatenation of named parameter blocks (each flattened) → ``dim`` outputs.

    Args:
        dim: output dimension k (a multiple of ``blocks``).
        seed: the projection's seed.
        blocks: s, the number of count-sketch blocks (non-zeros per input coordinate).
    """

    def __init__(self, dim: int = 8192, *, seed: int = 0, blocks: int = 4) -> None:
        if blocks < 1 or dim < blocks or dim % blocks:
            raise ValueError(f"`dim` ({dim}) must be a positive multiple of `blocks` ({blocks})")
        self.dim, self.seed, self.blocks = dim, seed, blocks
        self.width = dim // blocks
        self._hashes: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _hash(self, name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [s, size] int64 in [0, k), signs [s, size] float32 of ±1/√s) of one parameter."""
        key = (name, size)
        if key not in self._hashes:
            digest = hashlib.sha256(f"{self.seed}\0{name}\0{size}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            offsets = torch.arange(self.blocks).unsqueeze(1) * self.width
            positions = torch.randint(self.width, (self.blocks, size), generator=generator) + offsets
            signs = torch.randint(2, (self.blocks, size), generator=generator).float().mul_(2).sub_(1)
            self._hashes[key] = (positions, signs / math.sqrt(self.blocks))
        return self._hashes[key]

    def add(self, out: torch.Tensor, name: str, values: torch.Tensor) -> None:
        """``out += R_name · values``: accumulate one parameter's contribution.

        Args:
            out: [B, k] accumulator (float32 or float64), updated in place.
            name: the parameter's name (selects its hashes).
            values: [B, ...] one flattened block per row (its size fixes the hashes).
        """
        flat = values.reshape(values.shape[0], -1)
        positions, signs = self._hash(name, flat.shape[1])
        for b in range(self.blocks):
            out.index_add_(1, positions[b], flat * signs[b].to(flat.dtype))

    def project(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """R · x for named blocks [B, ...] (one row per vector), summed over the blocks: [B, k]."""
        first = next(iter(blocks.values()))
        out = torch.zeros(first.shape[0], self.dim, dtype=first.dtype)
        for name, values in blocks.items():
            self.add(out, name, values)
        return out


__all__ = ["SparseProjection"]
