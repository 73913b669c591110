"""A bounded shuffle buffer: rows in, shuffled batches out, memory fixed by its capacity.

Activations arrive in chunks of whole responses (neighbouring tokens are alike); an SAE should see
batches mixed across many responses. The buffer fills to capacity, shuffles, hands out half of
its rows as batches and keeps the other half to mix with the next fill (SAELens's scheme). Its
whole state (rows held, generator) can be saved and restored, so a resumed run is the same run.
"""
from __future__ import annotations

from typing import Iterator

import torch


class ShuffleBuffer:
    """Holds at most ``capacity`` rows of width ``d`` (float32).

    Args:
        capacity: rows held; at least two batches.
        d: row width.
        generator: the seeded generator every shuffle draws from.
    """

    def __init__(self, capacity: int, d: int, generator: torch.Generator) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, got {capacity}")
        self.rows = torch.empty((capacity, d), dtype=torch.float32)
        self.n = 0
        self.generator = generator

    @property
    def capacity(self) -> int:
        return self.rows.shape[0]

    @property
    def full(self) -> bool:
        return self.n == self.capacity

    def add(self, x: torch.Tensor) -> torch.Tensor | None:
        """Take as many rows of [m, d] ``x`` as fit; return the rest (None when all fit)."""
        take = min(self.capacity - self.n, x.shape[0])
        self.rows[self.n:self.n + take] = x[:take]
        self.n += take
        return x[take:] if take < x.shape[0] else None

    def drain(self, batch_size: int, *, everything: bool = False) -> Iterator[torch.Tensor]:
        """Shuffle the rows held and yield whole batches from half of them (all of them when
        ``everything``; then a last, smaller batch too); the rest stay for the next fill."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        perm = torch.randperm(self.n, generator=self.generator)
        self.rows[:self.n] = self.rows[:self.n][perm]
        out = self.n if everything else (self.n // 2) // batch_size * batch_size
        out = max(out, min(batch_size, self.n))  # a buffer under two batches still gives one
        for start in range(0, out, batch_size):
            yield self.rows[start:min(start + batch_size, out)].clone()
        kept = self.n - out
        self.rows[:kept] = self.rows[out:self.n].clone()
        self.n = kept

    def state(self) -> dict[str, torch.Tensor]:
        """The rows held and the generator's state, as tensors (for a checkpoint)."""
        return {"rows": self.rows[:self.n].clone(), "generator": self.generator.get_state()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        rows = state["rows"]
        if rows.shape[0] > self.capacity or rows.shape[1] != self.rows.shape[1]:
            raise ValueError(f"a saved buffer of shape {tuple(rows.shape)} does not fit {tuple(self.rows.shape)}")
        self.rows[:rows.shape[0]] = rows
        self.n = rows.shape[0]
        self.generator.set_state(state["generator"])


__all__ = ["ShuffleBuffer"]
