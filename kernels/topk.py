"""Exact cosine top-k of query rows against a stream of key rows, never materialising [Q, N].

Names (faiss's): ``xq`` queries [Q, d], ``xb`` keys [N, d] (any key source of
:mod:`headwater.kernels.similarity`: tensor, numpy array/memmap, or iterable of
``(block, global_offset)``), ``k`` results per query, ``D`` scores [Q, k] float32, ``I`` global
key indices [Q, k] int64.

Contract (every backend):

- ``D[i]`` is sorted descending; equal scores are ordered by lower index, and when equal scores
  straddle the k-th place the lower indices are kept. "Equal" means equal *as computed* in float32:
  two keys whose true cosines differ by less than the float32 rounding of a dot product (about
  1e-6 relative) may come out in either order, which is the documented tolerance of the exactness
  tests against float64.
- Rows are normalised inside (see :mod:`headwater.kernels.similarity`); a zero query or key row
  scores 0 against everything, never NaN.
- When fewer than ``k`` keys exist, the missing slots at the end of each row hold score ``-inf``
  and index ``-1`` (faiss's convention for missing results); the output is always [Q, k].
- Memory is O(Q·k) for the running result plus one work tile (O(tile_rows · (d + min(Q, 2048)))),
  whatever N is.

This module holds the torch reference (:func:`cosine_topk_reference`, the oracle: full matrix plus
a stable sort), the tiled torch backend, the tiled C++ backend and the dispatcher
:func:`cosine_topk`. The Triton kernel lives in :mod:`headwater.kernels.topk_triton` so that
importing this module never needs triton.

The C++ backend (``auto`` on the CPU) has three paths; :mod:`headwater.kernels.cost_model` picks
the one predicted fastest from rates measured on the machine (cached once):

- few queries (at most :data:`FEW_QUERIES`): bound by memory bandwidth; one fused C++ pass over
  each key tile computes the dot products and the key norms together (keys read once).
- float32 GEMM: the search is bound by the GEMM. Each [q_chunk, n] score tile comes from one
  BLAS call (torch's; see the comment in `_cosine_topk_cpp`), then C++ threads scan it,
  scale each column by its key's inverse norm on the fly and merge into per-row heaps.
- bfloat16 screening (below), where the machine's bfloat16 GEMM is fast enough to pay.

One final C++ sort per row gives the (score desc, index asc) order.

Screening with bfloat16 (many queries, CPUs with native bfloat16 dot products): a bfloat16 GEMM
runs about twice as fast as float32 there (measured 214 vs 100 GFLOP/s on one core of the bench
machine), so the score tile is computed in bfloat16 from unit vectors and used only to *screen*;
the result is exact, not approximate. Each screening score a is within delta_i + rel·|a| of the
float32 cosine (:func:`screening_deltas`): delta_i bounds what the bfloat16 copies of the query
and key move a dot product by, from the measured lengths of their rounding errors (about 0.43·2^-8
each for unit rows, against 2^-8 in the worst case), plus float32 accumulation; rel = 2^-8 covers
the GEMM's bfloat16 output. So every key has a lower and an upper bound on its exact score, and a
key can reach the top-k only if its upper bound reaches the k-th best lower bound among the keys
met so far. Per row and block of keys (C++): the keys that clear that bar are buffered and the
bar rises as they come; the survivors then get exact float32 scores (dot product times inverse
norm, the few-query path's formula) key by key, so each key row is read once for all the query
rows that kept it; one partial sort merges them into the row's kept set. On random data a row
scores about k·(1 + ln(blocks)) keys exactly, plus those within about two bounds of the k-th best.

The tiled search has the shape of faiss ``contrib.exhaustive_search.knn_ground_truth``: stream key
tiles, merge each tile's candidates into a running top-k, offset local indices to global ones,
sort once at the end.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
import torch

from headwater.kernels import _dispatch, cost_model
from headwater.kernels.prepared import PreparedKeys, float32_rows, prepare_block, trusted_pass
from headwater.kernels.similarity import (
    DEFAULT_QUERY_CHUNK,
    KeySource,
    as_query_matrix,
    cosine_similarity,
    iter_key_blocks,
    normalize_rows,
    scaled_rows_and_inverse_norms,
    tile_rows_for,
)
from headwater.kernels.topk_merge import (
    MISSING_INDEX,
    MISSING_SCORE,
    empty_result,
    merge_topk,
    sort_by_score_then_index,
)

# The fused few-query pass takes at most this many queries (its per-query accumulators stay in
# registers); whether it is used for them is the cost model's choice.
FEW_QUERIES = 8
BF16_UNIT_ROUNDOFF = 2.0**-8


# Force bfloat16 screening on (True) or off (False) for the C++ backend; None: the path the cost
# model predicts fastest on this machine (the tests run every path everywhere).
SCREEN: bool | None = None
SCREEN_BLOCK_BYTES = 128 << 20  # bfloat16 unit key rows per screened block, at most ...
SCREEN_MAX_ROWS = 16384  # ... and key rows per screened block, at most
SCREEN_SCORE_BYTES = 8 << 20  # bfloat16 screening scores per GEMM: they are scanned from cache


def screen_block_rows(d: int) -> int:
    """Key rows per screened block (before the tile's and the key count's own limits): as many as
    SCREEN_MAX_ROWS and SCREEN_BLOCK_BYTES of bfloat16 unit rows allow (16,384 rows up to d =
    4,096), at least 256. Large blocks pay: the keys kept from one block and pushed out by a later
    one each cost an exact score, about k·(1 + ln(blocks)) per row in all, and each block costs a
    merge of the kept set. At d = 4,096, 16,384-row blocks against 2,048-8,000 made searches
    5-30% faster at every k ≥ 100 measured and no slower at k = 10 (bench/RESULTS.md). A block
    may be smaller than k (correct, only slower)."""
    return max(256, min(SCREEN_MAX_ROWS, SCREEN_BLOCK_BYTES // (2 * d)))


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    return k


# ----------------------------------------------------------------------------------------------
# torch reference: the oracle
# ----------------------------------------------------------------------------------------------


def cosine_topk_reference(
    queries: Any, keys: KeySource, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full cosine matrix [Q, N] float32, then a stable descending sort per row.

    Same contract as :func:`cosine_topk`, but memory O(Q·N). ``keys`` may be any key source.
    """
    k = _check_k(k)
    xq = as_query_matrix(queries)
    blocks = list(iter_key_blocks(keys, xq.shape[1], 1 << 62))  # a generator can be read once
    s = cosine_similarity(xq, blocks, max_bytes=1 << 62)  # [Q, N]; the reference may be big
    covered = torch.zeros(s.shape[1], dtype=torch.bool, device=s.device)
    for tile, offset in blocks:
        covered[offset : offset + tile.shape[0]] = True
    s = torch.where(covered[None, :], s, MISSING_SCORE)  # rows no block covers are not results
    scores, order = torch.sort(s, dim=1, descending=True, stable=True)
    scores, indices = scores[:, :k], order[:, :k]
    indices = torch.where(torch.isneginf(scores), MISSING_INDEX, indices)
    out_s, out_i = empty_result(xq.shape[0], k, xq.device)
    out_s[:, : scores.shape[1]] = scores
    out_i[:, : indices.shape[1]] = indices
    return out_s, out_i


# ----------------------------------------------------------------------------------------------
# tiled torch backend
# ----------------------------------------------------------------------------------------------


def _tile_topk_torch(
    scores: torch.Tensor, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``min(k, n)`` of a score tile [q, n] per row, ordered by (score desc, index asc).

    torch.topk picks an arbitrary member among equal scores at the k-th place; rows where more
    than k scores reach the k-th value are redone with a stable sort so the lower indices win.
    """
    kk = min(k, scores.shape[1])
    values, local = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    kth = values[:, -1:]
    tied = ((scores >= kth).sum(dim=1) > kk).nonzero().flatten()
    if tied.numel():
        stable_values, stable_local = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied] = stable_values[:, :kk]
        local[tied] = stable_local[:, :kk]
    return sort_by_score_then_index(values, local + offset)


# ----------------------------------------------------------------------------------------------
# dispatcher
# ----------------------------------------------------------------------------------------------


def cosine_topk(
    queries: Any,
    keys: KeySource,
    k: int,
    *,
    backend: str = "auto",
    tile_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` keys by cosine similarity for every query row.

    Args:
        queries: [Q, d] tensor or numpy array, fp32/fp16/bf16/fp64. Results live on its device.
        keys: [N, d] tensor, numpy array or memmap, or an iterable of ``(block [n_b, d],
            global_offset)`` pairs (streamed; never held whole).
        k: results per query; may exceed N (missing slots: score -inf, index -1).
        backend: ``"auto"`` (Triton on CUDA, else C++ if built, else torch), ``"triton"``,
            ``"cpp"`` or ``"torch"``; see :mod:`headwater.kernels._dispatch`.
        tile_rows: key rows per work tile (default: derived from Q and d, about 32 MiB of fp32
            per tile on the CPU; on CUDA a device tensor is one tile and host keys move in tiles
            of 65,536 rows).

    Returns:
        ``(D, I)``: scores [Q, k] float32 sorted descending (ties: lower index first) and global
        key indices [Q, k] int64.
    """
    k = _check_k(k)
    xq = as_query_matrix(queries)
    q, d = xq.shape
    chosen = _dispatch.resolve_backend("cosine_topk", backend, xq.device)
    if tile_rows is not None and (isinstance(tile_rows, bool) or not isinstance(tile_rows, int) or tile_rows < 1):
        raise ValueError(f"tile_rows must be a positive int or None, got {tile_rows!r}")
    if chosen == "triton" and k > 0 and q > 0:
        from headwater.kernels import topk_triton  # imports triton only when used

        if k <= topk_triton.MAX_K:
            # the Triton path sizes its own tiles: keys already on the device are one tile (a view)
            return topk_triton.cosine_topk_triton(xq, keys, k, tile_rows=tile_rows)
        _dispatch.log_once("cosine_topk", "torch", f"k={k} exceeds the Triton kernel's MAX_K={topk_triton.MAX_K}")
        return _cosine_topk_torch(xq, keys, k, tile_rows or topk_triton.HOST_TILE_ROWS)
    tile_rows = tile_rows or tile_rows_for(d, q)
    if k == 0 or q == 0:
        # Still walk the key source so that malformed input is reported the same way.
        for _ in iter_key_blocks(keys, d, tile_rows):
            pass
        return empty_result(q, k, xq.device)
    if chosen == "cpp":
        return _cosine_topk_cpp(xq, keys, k, tile_rows)
    return _cosine_topk_torch(xq, keys, k, tile_rows)


def _query_chunks(q: int) -> list[tuple[int, int]]:
    return [(start, min(q, start + DEFAULT_QUERY_CHUNK)) for start in range(0, q, DEFAULT_QUERY_CHUNK)]


def _cosine_topk_torch(
    xq: torch.Tensor, keys: KeySource, k: int, tile_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    q, d = xq.shape
    xq_hat = normalize_rows(xq, "queries")
    run_s, run_i = empty_result(q, k, xq.device)
    chunks = _query_chunks(q)
    for tile, offset in iter_key_blocks(keys, d, tile_rows):
        tile32, inv = scaled_rows_and_inverse_norms(tile.to(xq.device, non_blocking=True), "keys", offset)
        for start, stop in chunks:
            scores = (xq_hat[start:stop] @ tile32.T) * inv[None, :]  # [q_chunk, n]
            new_s, new_i = _tile_topk_torch(scores, offset, k)
            run_s[start:stop], run_i[start:stop] = merge_topk(
                run_s[start:stop], run_i[start:stop], new_s, new_i, k
            )
    return run_s, run_i


def _cosine_topk_cpp(
    xq: torch.Tensor, keys: KeySource, k: int, tile_rows: int, *, screen: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score tiles from BLAS (or, for a few queries, from one fused C++ pass); selection, merge
    and the final sort in ``headwater._C`` (OpenMP).

    The running result is kept as one binary heap per row (root = the worst kept result), so a
    tile element costs one comparison against the root unless it enters the top-k. Arrays reach
    C++ as numpy views of the tensors (shared memory), and the heaps are updated in place.
    ``screen`` (default :data:`SCREEN`; None: for more than FEW_QUERIES queries on a CPU with
    native bfloat16) screens tiles with a bfloat16 GEMM and scores only the surviving keys exactly
    (see the module docstring).
    """
    ext = _dispatch.load_extension()
    q, d = xq.shape
    xq_hat = normalize_rows(xq, "queries")
    screen = SCREEN if screen is None else screen
    if screen is None:
        path = _planned_path(ext, q, _known_rows(keys, tile_rows), d, k, isinstance(keys, PreparedKeys))
        screen, few = path == "screen", path == "few"
    else:
        few = not screen and q <= FEW_QUERIES
    if screen:
        return _cosine_topk_screened(ext, xq_hat, keys, k, tile_rows)
    heap_s, heap_i = empty_result(q, k, xq.device)
    if few and isinstance(keys, PreparedKeys):
        return _cosine_topk_few_prepared(ext, xq_hat, keys, k, tile_rows, heap_s, heap_i)
    inv_buffer = torch.empty(tile_rows, dtype=torch.float32)
    if few:
        raw_buffer = torch.empty(q * tile_rows, dtype=torch.float32)
    else:
        score_buffer = np.empty(min(q, DEFAULT_QUERY_CHUNK) * tile_rows, dtype=np.float32)
    chunks = _query_chunks(q)
    for tile, offset in iter_key_blocks(keys, d, tile_rows):
        tile32 = float32_rows(tile, offset)
        n = tile32.shape[0]
        if few:
            # no torch op between the C++ calls: small torch ops between OpenMP regions paid
            # for waking and parking threads, which dominated the time at Q = 1
            raw, inv = raw_buffer[: q * n].view(q, n).numpy(), inv_buffer[:n].numpy()
            trusted_pass(lambda r: ext.cosine_scores_few_queries(xq_hat.numpy(), r.numpy(), raw, inv),
                         tile32, inv, offset)
            ext.topk_merge_tile(raw, inv, offset, heap_s.numpy(), heap_i.numpy())
            continue
        inv = inv_buffer[:n].numpy()
        tile32 = trusted_pass(lambda r: ext.inverse_row_norms(r.numpy(), inv), tile32, inv, offset)
        for start, stop in chunks:
            raw = score_buffer[: (stop - start) * n].reshape(stop - start, n)
            # [q_chunk, n], scaled by inv inside the scan. torch's GEMM, not numpy's: OpenBLAS's
            # worker threads spin after each call and fought the C++ scan's OpenMP threads for
            # the cores (Q = 64, d = 576, k = 100: 58 ms with np.matmul, 31 ms with torch.mm),
            # although numpy's GEMM alone measured 15-25% faster on an earlier machine.
            torch.mm(xq_hat[start:stop], tile32.T, out=torch.from_numpy(raw))
            ext.topk_merge_tile(raw, inv, offset, heap_s[start:stop].numpy(), heap_i[start:stop].numpy())
    ext.topk_sort_rows(heap_s.numpy(), heap_i.numpy())
    return heap_s, heap_i


def screening_bounds(xq_hat: torch.Tensor, xq_bf16: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-query terms of the screening bound: the length of each query's bfloat16 rounding error
    |bf16(q) - q| and the length of its bfloat16 copy |bf16(q)|, float64 [Q] each."""
    rounded = xq_bf16.double()
    return (rounded - xq_hat.double()).norm(dim=1).numpy(), rounded.norm(dim=1).numpy()


def screening_deltas(query_errors: np.ndarray, query_norms: np.ndarray, key_error: float, d: int) -> np.ndarray:
    """The score-independent part of the screening bound for each query row, float32 [Q].

    With q the float32 unit query, k the key times its float32 inverse norm, q~ and k~ their
    bfloat16 copies: q~·k~ - q·k = q~·(k~ - k) + (q~ - q)·k, so by Cauchy-Schwarz the bfloat16
    inputs move a cosine by at most |q~|·|k~ - k| + |q~ - q|·|k| (``key_error`` is the largest
    |k~ - k| in the block, |k| <= 1 + 1e-6). float32 accumulation over d terms moves the GEMM's sum
    and the exact score by at most d·2^-24 times the product of the norms each; 1e-5 covers the
    rounding of the exact score's final product and of this bound itself. The GEMM's bfloat16
    output adds at most ``SCREEN_RELATIVE``·|score|, applied per score in C++.
    """
    rounding = query_norms * key_error + query_errors * (1.0 + 1e-6)
    accumulation = d * 2.0**-24 * (query_norms * (1.0 + key_error) + 1.0 + 1e-6)
    return ((rounding + accumulation) * (1.0 + 1e-6) + 1e-5).astype(np.float32)


# |bf16(s) - s| <= u·|s| for round-to-nearest, so |bf16(s) - s| <= u/(1 - u)·|bf16(s)|.
SCREEN_RELATIVE = BF16_UNIT_ROUNDOFF / (1.0 - BF16_UNIT_ROUNDOFF) * (1.0 + 1e-6)


def _cosine_topk_few_prepared(
    ext: Any, xq_hat: torch.Tensor, keys: PreparedKeys, k: int, tile_rows: int, heap_s: torch.Tensor,
    heap_i: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The few-query path over search-ready keys: their inverse norms are known, so one C++ pass
    computes only the dot products (the same dot16 and the same inverse norm as the fused pass:
    bit-identical results), then the heap merge."""
    q = xq_hat.shape[0]
    xq_np = xq_hat.numpy()
    raw_buffer = np.empty(q * tile_rows, dtype=np.float32)
    for prepared in keys.prepared_blocks():
        for lo in range(0, prepared.rows.shape[0], tile_rows):
            rows = prepared.rows[lo : lo + tile_rows]
            n = rows.shape[0]
            raw = raw_buffer[: q * n].reshape(q, n)
            ext.dot_scores(xq_np, rows.numpy(), raw)
            ext.topk_merge_tile(raw, prepared.inv_norms[lo : lo + n], prepared.offset + lo, heap_s.numpy(), heap_i.numpy())
    ext.topk_sort_rows(heap_s.numpy(), heap_i.numpy())
    return heap_s, heap_i


def _known_rows(keys: KeySource, tile_rows: int) -> int:
    """N for a tensor, array or prepared keys; for a stream (unknown length), a guess of many tiles."""
    if isinstance(keys, (torch.Tensor, np.ndarray)):
        return int(keys.shape[0])
    if isinstance(keys, PreparedKeys):
        return len(keys)
    return 16 * tile_rows


def _planned_path(ext: Any, q: int, n: int, d: int, k: int, prepared: bool) -> str:
    """The C++ path the cost model predicts fastest for this shape on this machine."""
    rates = cost_model.machine_rates(ext)
    path, predicted = cost_model.plan_search(
        rates, q, n, d, k, few_max=FEW_QUERIES, screen_block_rows=screen_block_rows(d), prepared=prepared
    )
    costs = ", ".join(f"{name} {seconds * 1e3:.3g} ms" for name, seconds in sorted(predicted.items()))
    _dispatch.log_once("cosine_topk", f"cpp/{path}", f"Q={q} N={n} d={d} k={k}; predicted {costs}")
    return path


_WORKSPACES = threading.local()


def _workspace(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A reusable 1-D work buffer of at least ``numel`` elements, kept per thread between searches.

    The screened path's buffers reach tens of MiB (bfloat16 unit rows of a block, its score
    block); allocated fresh, the first write to each page faults, which cost about 10 ms per
    64 MiB here, a tenth of a search with 8 queries at d = 4096. :func:`release_workspace` frees
    them.
    """
    buffers = getattr(_WORKSPACES, "buffers", None)
    if buffers is None:
        buffers = _WORKSPACES.buffers = {}
    buffer = buffers.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        buffers.pop(name, None)  # free the old one first
        buffer = buffers[name] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def release_workspace() -> None:
    """Free this thread's screening work buffers (they are made again by the next search)."""
    _WORKSPACES.buffers = {}


def _screening_blocks(
    ext: Any, keys: KeySource, d: int, tile_rows: int, step: int
) -> Iterator[tuple[torch.Tensor, int, np.ndarray, torch.Tensor, np.ndarray]]:
    """``(rows [n, d] float32, offset, inverse norms [n], bfloat16 unit rows [n, d], rounding
    errors [n])`` per screened block of at most ``step`` rows: sliced from search-ready keys, or
    made here (one C++ pass into buffers allocated once: a fresh tens-of-MiB array per block costs
    page faults)."""
    if isinstance(keys, PreparedKeys):
        for prepared in keys.prepared_blocks():
            for lo in range(0, prepared.rows.shape[0], step):
                hi = lo + step
                yield (prepared.rows[lo:hi], prepared.offset + lo, prepared.inv_norms[lo:hi],
                       prepared.unit_bf16[lo:hi], prepared.errors[lo:hi])
        return
    inv_buffer = np.empty(step, dtype=np.float32)
    error_buffer = np.empty(step, dtype=np.float32)
    unit_buffer = _workspace("unit", step * d, torch.bfloat16)
    for tile, tile_offset in iter_key_blocks(keys, d, tile_rows):
        tile32 = float32_rows(tile, tile_offset)
        for lo in range(0, tile32.shape[0], step):
            block = tile32[lo : lo + step]
            n, offset = block.shape[0], tile_offset + lo
            inv, unit, errors = inv_buffer[:n], unit_buffer[: n * d].view(n, d), error_buffer[:n]
            block = prepare_block(ext, block, offset, inv, unit, errors)
            yield block, offset, inv, unit, errors


def _cosine_topk_screened(
    ext: Any, xq_hat: torch.Tensor, keys: KeySource, k: int, tile_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The many-query C++ path with bfloat16 screening (exact results; see the module docstring).

    ``xq_hat``: unit query rows [Q, d] float32 on the CPU. The running result of each row is a
    kept set of k slots (unsorted; C++ merges each screened block into it), sorted once at the end.
    """
    q, d = xq_hat.shape
    kept_s, kept_i = empty_result(q, k, xq_hat.device)
    xq_np = xq_hat.numpy()
    xq_bf16 = xq_hat.to(torch.bfloat16)
    query_errors, query_norms = screening_bounds(xq_hat, xq_bf16)
    # Key tiles are screened in blocks of screen_block_rows (up to 128 MiB of bf16 unit rows, never
    # more rows than there are keys), in buffers allocated once per thread (a fresh output per
    # GEMM costs page faults). Queries go in chunks whose bf16 score block stays in cache
    # (SCREEN_SCORE_BYTES) for the scan that follows its GEMM.
    step = min(screen_block_rows(d), tile_rows, max(1, _known_rows(keys, tile_rows)))
    chunk = max(64, min(DEFAULT_QUERY_CHUNK, SCREEN_SCORE_BYTES // (2 * step)))
    chunks = [(start, min(q, start + chunk)) for start in range(0, q, chunk)]
    approx_buffer = _workspace("approx", min(q, chunk) * step, torch.bfloat16)
    for block, offset, inv, unit_bf16, errors in _screening_blocks(ext, keys, d, tile_rows, step):
        n = block.shape[0]
        deltas = screening_deltas(query_errors, query_norms, float(errors.max()), d)
        for start, stop in chunks:
            approx = approx_buffer[: (stop - start) * n].view(stop - start, n)
            torch.mm(xq_bf16[start:stop], unit_bf16.T, out=approx)  # [q_chunk, n] bfloat16
            ext.topk_merge_tile_screened(
                approx.view(torch.int16).numpy(), xq_np[start:stop], block.numpy(), inv,
                offset, deltas[start:stop], SCREEN_RELATIVE, kept_s[start:stop].numpy(),
                kept_i[start:stop].numpy(),
            )
    ext.topk_sort_rows(kept_s.numpy(), kept_i.numpy())
    return kept_s, kept_i
