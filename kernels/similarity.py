"""Cosine similarity between query rows and key rows, block by block.

Names (faiss's): ``xq`` queries [Q, d], ``xb`` keys [N, d]; ``S`` = cos(xq, xb) [Q, N] float32.

Keys come from a *key source*, so that a store larger than memory streams through:

- a torch tensor [N, d] (fp32/fp16/bf16/fp64, any device);
- a numpy array or ``np.memmap`` [N, d] (float16/float32/float64): only one tile is read at a time;
- an iterable of ``(block, global_offset)`` pairs, ``block`` a tensor or array [n_b, d]: the shards
  of a vector store; global index = offset + row in the block. Blocks may come in any order but
  must not overlap.

Rows are normalised inside: ``S[i, j] = (xq_i / |xq_i|) . xb_j * (1 / |xb_j|)`` computed in float32,
with a zero row giving 0 (never NaN). Keys are not normalised as a separate pass: the inverse norm of
each key row scales its column of the score tile, which costs Q·n multiplies instead of n·d and no
copy of the keys. Non-finite inputs are rejected with the global row that holds them.
"""
from __future__ import annotations

import bisect
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Union

import numpy as np
import torch

KeySource = Union[torch.Tensor, np.ndarray, Iterable[tuple[Any, int]]]

# Default work tile. The fp32 score tile (q_chunk x n) is kept under SCORE_TILE_BYTES and a
# converted fp32 key tile (n x d; a float32 tensor is sliced without a copy) under
# KEY_TILE_BYTES. GEMM throughput on the bench machine rose by a third from n = 8,192 to 32,768
# rows (bench/RESULTS.md), so tiles are large; they stay fixed whatever N is.
SCORE_TILE_BYTES = 64 << 20
KEY_TILE_BYTES = 256 << 20
# Queries are processed in chunks of at most this many rows per key tile, bounding the score tile.
DEFAULT_QUERY_CHUNK = 2048

_NUMPY_FLOATS = (np.float16, np.float32, np.float64)
_TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_query_matrix(queries: Any, name: str = "queries") -> torch.Tensor:
    """``queries`` as a 2-D floating tensor [Q, d]; numpy arrays are wrapped without a copy."""
    if isinstance(queries, np.ndarray):
        if queries.dtype.type not in _NUMPY_FLOATS:
            raise TypeError(f"{name} must be float16, float32 or float64, got {queries.dtype}")
        queries = torch.from_numpy(np.ascontiguousarray(queries))
    if not isinstance(queries, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(queries).__name__}")
    if queries.dim() != 2:
        raise ValueError(f"{name} must be 2-D [Q, d], got shape {tuple(queries.shape)}")
    if queries.dtype not in _TORCH_FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {queries.dtype}")
    return queries


def normalize_rows(x: torch.Tensor, name: str = "queries", offset: int = 0) -> torch.Tensor:
    """Rows of ``x`` [n, d] divided by their L2 norm, in float32; zero rows stay zero.

    Rows whose norm float32 cannot hold (tiny or huge entries) are first scaled by a power of two
    (:func:`scaled_rows_and_inverse_norms`), so the result is the unit row whatever the scale.

    Raises:
        ValueError: a row holds inf/NaN, naming the row.
    """
    x32, inv = scaled_rows_and_inverse_norms(x, name, offset)
    return x32 * inv[:, None]


def inverse_row_norms(x: torch.Tensor, name: str = "keys", offset: int = 0) -> torch.Tensor:
    """1 / |x_i| per row of ``x`` [n, d] as float32 [n], with 0 for a zero row (float32 arithmetic:
    for rows of any scale use :func:`scaled_rows_and_inverse_norms`).

    Raises:
        ValueError: a row norm is not finite (inf/NaN in the row, or overflow), naming the row.
    """
    return inverse_norms(torch.linalg.vector_norm(x, dim=1, dtype=torch.float32), name, offset)


# A row whose float32 norm is below 2^-60 has squares in (or under) float32's subnormal range, and
# one whose norm overflows has squares past its largest value: either norm cannot be trusted.
SMALLEST_TRUSTED_NORM = 2.0**-60
# float64 rows are scaled before they are rounded to float32 when their largest entry is outside
# [2^-100, 2^100]: rounding would flush them to zero or to infinity.
FLOAT64_SAFE_EXPONENT = 100


def rescale_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` [n, d] whose ``rows`` are multiplied by the power of two that brings each
    one's largest |entry| into [0.5, 1). Multiplying by a power of two is exact (subnormal entries
    included), and a cosine does not depend on a row's scale."""
    out = x.clone()
    part = out[rows]
    shift = -torch.frexp(part.abs().amax(dim=1)).exponent[:, None].to(part.dtype)
    # Two steps: 2^shift itself may not be representable (a subnormal float32 row needs 2^149),
    # while each half is, and each multiplication by a power of two is exact.
    half = torch.trunc(shift / 2)
    out[rows] = torch.ldexp(torch.ldexp(part, half), shift - half)
    return out


def scaled_rows_and_inverse_norms(x: torch.Tensor, name: str = "keys", offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x32 [n, d] float32, 1 / |x32_i| [n] float32)`` with every row's norm trustworthy.

    A row whose float32 norm is not finite (huge entries), below :data:`SMALLEST_TRUSTED_NORM`, or
    zero while the row is not (tiny entries whose squares vanish) is rescaled by
    :func:`rescale_rows` first; float64 rows far outside float32's range are rescaled before they
    are rounded. Cosines computed from the returned rows equal those of ``x``; only rows that need
    it are touched (``x32`` is a copy then). Zero rows get inverse norm 0.

    Raises:
        ValueError: a row holds inf/NaN, naming the row (global index ``offset + i``).
    """
    if x.dtype == torch.float64 and x.numel():
        amax = x.abs().amax(dim=1)
        far = (amax > 0) & torch.isfinite(amax) & ((amax < 2.0**-FLOAT64_SAFE_EXPONENT) | (amax > 2.0**FLOAT64_SAFE_EXPONENT))
        if bool(far.any()):
            x = rescale_rows(x, far.nonzero().flatten())
    x32 = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x32, dim=1, dtype=torch.float32)
    suspect = (~torch.isfinite(norms) | (norms < SMALLEST_TRUSTED_NORM)).nonzero().flatten()
    if suspect.numel():
        x32, fixed = rescale_untrusted_rows(x32, suspect, name, offset)
        if fixed.numel():
            norms[fixed] = torch.linalg.vector_norm(x32[fixed], dim=1, dtype=torch.float32)
    return x32, inverse_norms(norms, name, offset)


def rescale_untrusted_rows(x32: torch.Tensor, suspect: torch.Tensor, name: str = "keys",
                           offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale the ``suspect`` rows of ``x32`` (indices whose float32 norm looked wrong) that are
    neither zero nor non-finite; only those rows are read.

    Returns:
        ``(x32, fixed)``: ``x32`` itself when no row needed it, else a copy with the ``fixed`` rows
        rescaled by :func:`rescale_rows`.

    Raises:
        ValueError: a suspect row holds inf/NaN, naming it (global index ``offset + i``).
    """
    rows = x32[suspect]
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        raise non_finite_rows_error(name, [offset + int(r) for r in suspect[~finite][:5].tolist()])
    fixed = suspect[rows.abs().amax(dim=1) > 0]  # zero rows stay zero
    return (rescale_rows(x32, fixed) if fixed.numel() else x32), fixed


def non_finite_rows_error(name: str, rows: list[int]) -> ValueError:
    """The error for rows (global indices) whose norm is not finite."""
    return ValueError(
        f"{name} rows {rows} hold inf/NaN (or their norm overflows float32); "
        "cosine similarity is undefined there"
    )


def inverse_norms(norms: torch.Tensor, name: str = "keys", offset: int = 0) -> torch.Tensor:
    """1 / ``norms`` as float32, 0 where a norm is 0; raises ValueError naming non-finite rows."""
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()[:5].tolist()
        raise non_finite_rows_error(name, [offset + b for b in bad])
    return torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def _as_block_tensor(block: Any, where: str) -> torch.Tensor:
    if isinstance(block, np.ndarray):
        if block.dtype.type not in _NUMPY_FLOATS:
            raise TypeError(f"{where} must be float16, float32 or float64, got {block.dtype}")
        block = np.ascontiguousarray(block)  # a strided memmap slice is read as one tile
        with warnings.catch_warnings():
            # read-only memmaps: torch warns that writing would be undefined; tiles are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(block)
    if isinstance(block, torch.Tensor):
        if block.dtype not in _TORCH_FLOATS:
            raise TypeError(f"{where} must be float16, bfloat16, float32 or float64, got {block.dtype}")
        return block
    raise TypeError(f"{where} must be a torch.Tensor or numpy array, got {type(block).__name__}")


def iter_key_blocks(
    keys: KeySource, d: int, tile_rows: int
) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield ``(tile [n, d] tensor in its stored dtype, global offset)`` with n <= ``tile_rows``.

    Checks every block: 2-D, ``d`` columns, a non-negative integer offset, no overlap with an
    earlier block. Errors name the block (its position in the iterable) and what is wrong.
    """
    if tile_rows < 1:
        raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
    if isinstance(keys, (torch.Tensor, np.ndarray)):
        blocks: Iterable[tuple[Any, int]] = [(keys, 0)]
        whole = True
    elif isinstance(keys, (str, bytes, dict)):
        raise TypeError(f"keys must be a tensor, numpy array or iterable of (block, offset), got {type(keys).__name__}")
    else:
        blocks = keys
        whole = False
    seen: list[tuple[int, int]] = []  # sorted (start, end) of the blocks so far, to catch overlap
    for number, item in enumerate(blocks):
        where = "keys" if whole else f"keys block {number}"
        if not whole:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(f"{where} must be a (block, global_offset) pair, got {type(item).__name__}")
        block, offset = item
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"{where}: global_offset must be a non-negative int, got {offset!r}")
        offset = int(offset)
        if isinstance(block, np.ndarray) or isinstance(block, torch.Tensor):
            shape = tuple(block.shape)
        else:
            raise TypeError(f"{where} must be a torch.Tensor or numpy array, got {type(block).__name__}")
        if len(shape) != 2 or shape[1] != d:
            raise ValueError(f"{where} must be 2-D [n, d={d}], got shape {shape}")
        n = shape[0]
        if n == 0:
            continue
        span = (offset, offset + n)
        at = bisect.bisect_left(seen, span)
        if (at > 0 and seen[at - 1][1] > span[0]) or (at < len(seen) and seen[at][0] < span[1]):
            raise ValueError(f"{where} covers global rows [{span[0]}, {span[1]}), which overlap an earlier block")
        seen.insert(at, span)
        for start in range(0, n, tile_rows):
            yield _as_block_tensor(block[start : start + tile_rows], where), offset + start


def tile_rows_for(d: int, q: int) -> int:
    """Key rows per tile: the fp32 score tile fits SCORE_TILE_BYTES and the fp32 key tile
    KEY_TILE_BYTES."""
    by_scores = SCORE_TILE_BYTES // (4 * max(1, min(q, DEFAULT_QUERY_CHUNK)))
    by_keys = KEY_TILE_BYTES // (4 * max(1, d))
    return max(16, min(by_scores, by_keys))


def cosine_similarity_blocks(
    queries: Any,
    keys: KeySource,
    *,
    tile_rows: int | None = None,
) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield ``(S_block [Q, n] float32, global_offset)``: cosine similarities, one key tile at a time.

    The full [Q, N] matrix never exists; each block is computed on ``queries.device`` (key tiles are
    moved there). ``tile_rows`` (key rows per block) defaults to a size derived from Q and d.
    Consume each block before asking for the next if memory matters: the generator keeps none.
    """
    xq = as_query_matrix(queries)
    q, d = xq.shape
    tile_rows = tile_rows or tile_rows_for(d, q)
    xq_hat = normalize_rows(xq, "queries")
    for tile, offset in iter_key_blocks(keys, d, tile_rows):
        tile = tile.to(xq.device, non_blocking=True)
        yield similarity_tile(xq_hat, tile, offset), offset


def similarity_tile(xq_hat: torch.Tensor, tile: torch.Tensor, offset: int) -> torch.Tensor:
    """Cosine scores [q, n] float32 of normalised queries ``xq_hat`` [q, d] against raw ``tile`` [n, d]."""
    tile32, inv = scaled_rows_and_inverse_norms(tile, "keys", offset)
    return (xq_hat @ tile32.T) * inv[None, :]


def cosine_similarity(
    queries: Any,
    keys: KeySource,
    *,
    n_keys: int | None = None,
    max_bytes: int = 1 << 30,
    tile_rows: int | None = None,
) -> torch.Tensor:
    """The full cosine matrix S [Q, N] float32 on ``queries.device``, when it fits in ``max_bytes``.

    Columns follow global key indices; N is ``len(keys)`` for a tensor/array, else ``n_keys`` or
    one past the largest global index seen (rows no block covers are 0). Raises ``MemoryError``
    (naming the size) instead of allocating more than ``max_bytes``: use
    :func:`cosine_similarity_blocks` or :func:`headwater.kernels.cosine_topk` then.
    """
    xq = as_query_matrix(queries)
    if isinstance(keys, (torch.Tensor, np.ndarray)):
        n_keys = int(keys.shape[0])
    if n_keys is not None:
        needed = 4 * xq.shape[0] * n_keys
        if needed > max_bytes:
            raise MemoryError(
                f"the full similarity matrix [{xq.shape[0]}, {n_keys}] needs {needed} bytes, "
                f"over max_bytes={max_bytes}; iterate cosine_similarity_blocks instead"
            )
        out = torch.zeros(xq.shape[0], n_keys, dtype=torch.float32, device=xq.device)
        for block, offset in cosine_similarity_blocks(xq, keys, tile_rows=tile_rows):
            if offset + block.shape[1] > n_keys:
                raise ValueError(f"keys block at offset {offset} ends past n_keys={n_keys}")
            out[:, offset : offset + block.shape[1]] = block
        return out
    pieces: list[tuple[torch.Tensor, int]] = []
    total = 0
    for block, offset in cosine_similarity_blocks(xq, keys, tile_rows=tile_rows):
        total += block.numel() * 4
        if total > max_bytes:
            raise MemoryError(f"the similarity blocks exceed max_bytes={max_bytes}; iterate cosine_similarity_blocks instead")
        pieces.append((block, offset))
    n = max((off + b.shape[1] for b, off in pieces), default=0)
    out = torch.zeros(xq.shape[0], n, dtype=torch.float32, device=xq.device)
    for block, offset in pieces:
        out[:, offset : offset + block.shape[1]] = block
    return out
