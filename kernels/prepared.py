"""Search-ready keys: the per-key work of an exact search, done once for many searches.

Every search with bfloat16 screening (:mod:`headwater.kernels.topk`) first turns each key tile
into float32 rows, their inverse norms, their unit rows rounded to bfloat16 and the lengths of
those rounding errors: one pass over the keys that costs as much as a float32 GEMM with 16-32
queries (measured in bench/RESULTS.md). A program that searches the same keys again and again (a
nearest-neighbour graph, the discovery loop, a service) can do that pass once:

    keys = prepare_keys(vectors)                  # or VectorStore.search_keys(), kept on disk
    for queries in batches:
        D, I = cosine_topk(queries, keys, k)      # exact, identical results, no conversion pass

A :class:`PreparedKeys` is also an ordinary key source (an iterable of ``(block, offset)``), so
every backend and path accepts it; only the screened path reads the prepared copies. On the
screened and few-query paths results are bit-identical to a search of the raw keys (the copies
are made by the same C++ function from the same float32 rows, and exact scores use one formula);
on the float32-GEMM path BLAS may round a score differently when the tiles differ (within the
documented float32 tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from headwater.kernels import _dispatch
from headwater.kernels.similarity import (
    SMALLEST_TRUSTED_NORM,
    KeySource,
    iter_key_blocks,
    non_finite_rows_error,
    rescale_untrusted_rows,
    scaled_rows_and_inverse_norms,
    tile_rows_for,
)


@dataclass
class PreparedBlock:
    """One block of search-ready keys.

    Attributes:
        rows: [n, d] float32 on the CPU: the rows exact scores are computed from (the keys
            themselves, or a copy with rows of extreme scale rescaled by powers of two).
        offset: global index of the first row.
        inv_norms: [n] float32, 1 / |row| (0 for a zero row).
        unit_bf16: [n, d] bfloat16, the unit rows rounded to bfloat16 (the screening GEMM's input).
        errors: [n] float32, an upper bound on |unit_bf16 - row · inv_norm| per row.
    """

    rows: torch.Tensor
    offset: int
    inv_norms: np.ndarray
    unit_bf16: torch.Tensor
    errors: np.ndarray

    def __post_init__(self) -> None:
        n, d = self.rows.shape
        if self.rows.dtype != torch.float32 or self.unit_bf16.dtype != torch.bfloat16:
            raise ValueError("a prepared block holds float32 rows and bfloat16 unit rows")
        if tuple(self.unit_bf16.shape) != (n, d) or self.inv_norms.shape != (n,) or self.errors.shape != (n,):
            raise ValueError(
                f"prepared block at offset {self.offset}: rows {tuple(self.rows.shape)}, unit rows "
                f"{tuple(self.unit_bf16.shape)}, inverse norms {self.inv_norms.shape} and errors "
                f"{self.errors.shape} do not match"
            )


class PreparedKeys:
    """Keys with their search-ready copies, block by block (see the module docstring).

    ``blocks`` is a function that returns a fresh iterator of :class:`PreparedBlock` each time,
    so the keys can be searched any number of times (a store's copy is read shard by shard,
    memory flat in N).
    """

    def __init__(self, blocks: Callable[[], Iterator[PreparedBlock]], n: int, d: int) -> None:
        self._blocks = blocks
        self.n, self.d = int(n), int(d)

    def prepared_blocks(self) -> Iterator[PreparedBlock]:
        for block in self._blocks():
            if block.rows.shape[1] != self.d:
                raise ValueError(f"prepared block at offset {block.offset} has d={block.rows.shape[1]}, expected {self.d}")
            yield block

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        """The keys as an ordinary key source: ``(rows [n_b, d] float32, global offset)``."""
        for block in self.prepared_blocks():
            yield block.rows, block.offset

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"PreparedKeys(n={self.n}, d={self.d})"


def float32_rows(tile: torch.Tensor, offset: int) -> torch.Tensor:
    """A key tile as contiguous float32 on the CPU; float64 rows far outside float32's range are
    scaled first (rounding would flush them to 0 or infinity)."""
    if tile.dtype == torch.float64:
        tile = scaled_rows_and_inverse_norms(tile, "keys", offset)[0]
    return tile.to("cpu", torch.float32).contiguous()


def untrusted_norms(inv: np.ndarray) -> bool:
    """Whether inverse norms include one that may be wrong: a norm under 2^-60 (its squares reach
    float32's subnormal range) or zero (a zero row, or one whose squares vanished)."""
    return inv.size > 0 and (float(inv.min()) == 0.0 or float(inv.max()) > 1.0 / SMALLEST_TRUSTED_NORM)


def rescued_rows(rows: torch.Tensor, inv: np.ndarray, bad: int, offset: int) -> torch.Tensor | None:
    """``rows`` with the rows whose norm cannot be trusted rescaled (exactly, by powers of two),
    or None when none needs it (zero rows). When the C++ pass completed (``bad`` < 0) only the rows
    its inverse norms ``inv`` flag are read; when it stopped at a non-finite row ``bad``, the whole
    block is examined. Raises ValueError for rows holding inf/NaN."""
    if bad >= 0:
        fixed = scaled_rows_and_inverse_norms(rows, "keys", offset)[0]
        return fixed.contiguous() if fixed is not rows else None
    suspect = torch.from_numpy(((inv == 0) | (inv > 1.0 / SMALLEST_TRUSTED_NORM)).nonzero()[0])
    fixed, changed = rescale_untrusted_rows(rows, suspect, "keys", offset)
    return fixed.contiguous() if changed.numel() else None


def trusted_pass(run: Callable[[torch.Tensor], int], rows: torch.Tensor, inv: np.ndarray, offset: int) -> torch.Tensor:
    """Run a C++ pass over float32 ``rows`` that fills their inverse norms ``inv`` and returns the
    first row whose norm is not finite (or -1); when a norm cannot be trusted (rows of extreme
    scale), rescale those rows exactly and run it again. Returns the rows the pass last ran on.

    Raises:
        ValueError: a row holds inf/NaN (named by its global index).
    """
    bad = run(rows)
    if bad >= 0 or untrusted_norms(inv):  # rare: rows of extreme scale are rescaled, the pass redone
        fixed = rescued_rows(rows, inv, bad, offset)
        if fixed is not None:
            rows = fixed
            bad = run(rows)
    if bad >= 0:
        raise non_finite_rows_error("keys", [offset + bad])
    return rows


def prepare_block(ext: Any, rows: torch.Tensor, offset: int, inv: np.ndarray, unit: torch.Tensor,
                  errors: np.ndarray) -> torch.Tensor:
    """Fill ``inv`` [n], ``unit`` [n, d] bfloat16 and ``errors`` [n] for the float32 ``rows`` [n, d]
    (one C++ pass, see :func:`trusted_pass`). Returns the rows the copies were made from (``rows``
    or its rescaled copy).

    Raises:
        ValueError: a row holds inf/NaN (named by its global index).
    """
    bits = unit.view(torch.int16).numpy()
    return trusted_pass(lambda r: ext.unit_rows_bf16(r.numpy(), inv, bits, errors), rows, inv, offset)


def prepare_rows(rows: torch.Tensor, offset: int = 0) -> PreparedBlock:
    """The search-ready block of float32 ``rows`` [n, d] whose first row has global index ``offset``.

    Raises:
        RuntimeError: the C++ extension is not built (the copies are its input format).
        ValueError: a row holds inf/NaN (named by its global index).
    """
    ext = _dispatch.load_extension()
    if ext is None:
        raise RuntimeError(f"search-ready keys are made by the C++ extension: {_dispatch.extension_error()}")
    rows = float32_rows(rows, offset)
    count, d = rows.shape
    inv, errors = np.empty(count, dtype=np.float32), np.empty(count, dtype=np.float32)
    unit = torch.empty(count, d, dtype=torch.bfloat16)
    rows = prepare_block(ext, rows, offset, inv, unit, errors)
    return PreparedBlock(rows, offset, inv, unit, errors)


def prepare_keys(keys: KeySource, *, tile_rows: int | None = None) -> PreparedKeys:
    """Search-ready copies of ``keys`` (a tensor or numpy array), held in memory.

    Costs one pass over the keys and 2 bytes per key element (plus a float32 copy of keys that
    are not float32 already). Keys that are float32 tensors or arrays are referenced, not copied.

    Raises:
        RuntimeError: the C++ extension is not built (the copies are its input format).
        ValueError: a key row holds inf/NaN.
    """
    d = _key_dim(keys)
    blocks = [prepare_rows(tile, offset) for tile, offset in iter_key_blocks(keys, d, tile_rows or tile_rows_for(d, 1))]
    n = max((b.offset + b.rows.shape[0] for b in blocks), default=0)
    return PreparedKeys(lambda: iter(blocks), n, d)


def _key_dim(keys: KeySource) -> int:
    if isinstance(keys, PreparedKeys):
        return keys.d
    if isinstance(keys, (torch.Tensor, np.ndarray)):
        if keys.ndim != 2:
            raise ValueError(f"keys must be 2-D [N, d], got shape {tuple(keys.shape)}")
        return int(keys.shape[1])
    raise TypeError(
        "prepare_keys takes a tensor or numpy array of keys; for a vector store use "
        "VectorStore.search_keys(), which keeps the copies on disk"
    )
