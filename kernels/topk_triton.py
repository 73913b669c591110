"""Triton kernel for exact cosine top-k: fused tile matmul with a per-program running top-k, then a
torch merge of the per-program candidates (two stages).

Stage 1 (the kernel). The grid is (query blocks, key splits). Program (i, j) owns BLOCK_Q queries
and one contiguous range of keys of the current tile. It walks its range in blocks of BLOCK_N keys:

1. ``acc[BLOCK_Q, BLOCK_N] = xq . xb^T`` over d in chunks of BLOCK_D with ``tl.dot``, fp32
   accumulation (fp16/bf16 operands go to the tensor cores as they are; fp32 operands use
   ``input_precision="ieee"`` so TF32 never rounds them). In the same loop the key block's sum of
   squares is accumulated in fp32, so key norms cost no extra pass over the keys (the pass that
   matters at small Q, where the search is bound by memory bandwidth).
2. ``s = acc * (1/|xq|) * (1/|xb|)``, zero norms giving 0; padding rows/columns get -inf.
3. If some query of the block has a score above its current k-th best, merge: k rounds of
   max-and-mask over the running top-k [BLOCK_Q, KP] and the block [BLOCK_Q, BLOCK_N]
   (``tl.max``/``tl.argmax``; the running list wins ties because its keys come from earlier blocks,
   i.e. have lower indices, and ``argmax`` returns the first position, i.e. the lowest index).
   After the first blocks almost no block passes the test, so the merge costs little.

Each program writes its k candidates, sorted, to ``[splits, Q, KP]``; the first query block also
writes the keys' sums of squares, which the host checks for inf/NaN (naming the global row).

Stage 2 (torch, on the device): the ``splits * KP`` candidates of each query are merged with the
running result of earlier tiles by (score desc, index asc), keeping k. Memory: O(Q·k·splits) on
the device plus the key tile, never [Q, N].

Work sizes. The number of splits is chosen so that about four programs run per SM; at Q = 1 that
puts every SM on its own slice of the keys (bandwidth bound), at Q = 1024 the query blocks already
fill the device. k is limited to :data:`MAX_K` (the unrolled merge grows with k); larger k fall back
to the torch path on the same device, with a logged reason.

Under ``TRITON_INTERPRET=1`` (tests on the CPU) every operand is converted to fp32 after loading,
since bf16 arithmetic is wrong there, and blocks are made large since the interpreter's cost grows
with the number of program instances. Plain pointer arithmetic only: runs on triton 3.6 and 3.7.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from headwater.kernels import _dispatch
from headwater.kernels.similarity import (
    SMALLEST_TRUSTED_NORM,
    KeySource,
    iter_key_blocks,
    non_finite_rows_error,
    rescale_untrusted_rows,
    scaled_rows_and_inverse_norms,
)
from headwater.kernels.topk_merge import empty_result, merge_topk

MAX_K = 128
# Key rows moved to the device per tile when keys do not already live there.
HOST_TILE_ROWS = 1 << 16


@triton.jit
def _cosine_topk_kernel(
    xq_ptr, xq_row_stride, inv_q_ptr, n_queries,
    xb_ptr, xb_row_stride, n_keys, d,
    keys_per_split, index_offset,
    sumsq_ptr, out_s_ptr, out_i_ptr,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # convert operands to fp32 before the dot (fp32 input, mixed dtypes, interpreter)
):
    # int64 ids and offsets: N * d exceeds 2**31 for a million 4096-d keys (triton issue #1058)
    pid_q = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < n_queries
    inv_q = tl.load(inv_q_ptr + offs_q, mask=q_ok, other=0.0)
    ak = tl.arange(0, KP)
    an = tl.arange(0, BLOCK_N)
    neg_inf = float("-inf")

    run_s = tl.full([BLOCK_Q, KP], neg_inf, dtype=tl.float32)
    run_i = tl.full([BLOCK_Q, KP], -1, dtype=tl.int64)
    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, n_keys)
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + an
        n_ok = offs_n < stop
        acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < d
            q = tl.load(
                xq_ptr + offs_q[:, None] * xq_row_stride + offs_d[None, :],
                mask=q_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            b = tl.load(
                xb_ptr + offs_n[:, None] * xb_row_stride + offs_d[None, :],
                mask=n_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            b32 = b.to(tl.float32)
            sumsq += tl.sum(b32 * b32, axis=1)
            if UPCAST:
                acc = tl.dot(q.to(tl.float32), tl.trans(b32), acc, input_precision="ieee")
            else:
                acc = tl.dot(q, tl.trans(b), acc)
        if pid_q == 0:
            tl.store(sumsq_ptr + offs_n, sumsq, mask=n_ok)
        # the max() keeps 1/sqrt(0) from being evaluated at all (zero rows score 0, never NaN)
        inv_b = tl.where(sumsq > 0, 1.0 / tl.sqrt(tl.maximum(sumsq, 1.1754944e-38)), 0.0)
        s = (acc * inv_q[:, None]) * inv_b[None, :]
        s = tl.where(q_ok[:, None] & n_ok[None, :], s, neg_inf)

        # merge only if some query has a score above its k-th best (equal scores lose: the
        # running keys have lower indices)
        kth = tl.max(tl.where(ak[None, :] == K - 1, run_s, neg_inf), axis=1)
        beats = tl.max((tl.max(s, axis=1) > kth).to(tl.int32), axis=0)
        if beats > 0:
            new_s = tl.full([BLOCK_Q, KP], neg_inf, dtype=tl.float32)
            new_i = tl.full([BLOCK_Q, KP], -1, dtype=tl.int64)
            for t in range(K):
                m_run = tl.max(run_s, axis=1)
                a_run = tl.argmax(run_s, axis=1)
                m_new = tl.max(s, axis=1)
                a_new = tl.argmax(s, axis=1)
                take_run = m_run >= m_new
                value = tl.where(take_run, m_run, m_new)
                i_run = tl.sum(tl.where(ak[None, :] == a_run[:, None], run_i, 0), axis=1)
                index = tl.where(take_run, i_run, index_offset + n0 + a_new)
                index = tl.where(value == neg_inf, -1, index)
                new_s = tl.where(ak[None, :] == t, value[:, None], new_s)
                new_i = tl.where(ak[None, :] == t, index[:, None], new_i)
                run_s = tl.where(take_run[:, None] & (ak[None, :] == a_run[:, None]), neg_inf, run_s)
                s = tl.where((take_run == 0)[:, None] & (an[None, :] == a_new[:, None]), neg_inf, s)
            run_s = new_s
            run_i = new_i

    out = pid_s * n_queries * KP + offs_q[:, None] * KP + ak[None, :]
    tl.store(out_s_ptr + out, run_s, mask=q_ok[:, None])
    tl.store(out_i_ptr + out, run_i, mask=q_ok[:, None])


def _settings(q: int, d: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D, num_warps)."""
    if _dispatch.triton_interpreter_enabled():
        return 16, 64, min(triton.next_power_of_2(max(d, 16)), 256), 4
    block_q = 16 if q <= 16 else 64
    return block_q, 64, 64, 4


def _splits(q_blocks: int, n: int, block_n: int, device: torch.device) -> int:
    n_blocks = triton.cdiv(max(n, 1), block_n)
    if _dispatch.triton_interpreter_enabled() or device.type != "cuda":
        return min(2, n_blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, triton.cdiv(4 * sms, q_blocks)))


def cosine_topk_triton(
    xq: torch.Tensor, keys: KeySource, k: int, *, tile_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 kernel per key tile, stage 2 merge in torch; contract of
    :func:`headwater.kernels.cosine_topk`. ``xq`` [Q, d] on a CUDA device (or on the CPU under the
    interpreter); key tiles are moved to that device."""
    if k > MAX_K:
        raise ValueError(f"the Triton top-k kernel keeps at most MAX_K={MAX_K} results, got k={k}")
    device = xq.device
    q, d = xq.shape
    xq32, inv_q = scaled_rows_and_inverse_norms(xq, "queries")
    if xq.dtype in (torch.float32, torch.float64) or not torch.equal(xq32, xq.to(torch.float32)):
        xq = xq32  # float32, with rows of extreme scale rescaled exactly
    if xq.stride(1) != 1:
        xq = xq.contiguous()
    inv_q = inv_q.contiguous()
    run_s, run_i = empty_result(q, k, device)
    kp = max(16, triton.next_power_of_2(k))
    block_q, block_n, block_d, num_warps = _settings(q, d, device)
    q_blocks = triton.cdiv(q, block_q)
    if tile_rows is None:
        # a tensor already on the device is one tile (a view, no copy); host keys stream
        on_device = isinstance(keys, torch.Tensor) and keys.device == device
        tile_rows = max(1, keys.shape[0]) if on_device else HOST_TILE_ROWS
    def run_tile(tile: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        n = tile.shape[0]
        upcast = (
            _dispatch.triton_interpreter_enabled()
            or tile.dtype != xq.dtype
            or tile.dtype == torch.float32
        )
        splits = _splits(q_blocks, n, block_n, device)
        keys_per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
        splits = triton.cdiv(n, keys_per_split)
        out_s = torch.empty(splits, q, kp, dtype=torch.float32, device=device)
        out_i = torch.empty(splits, q, kp, dtype=torch.int64, device=device)
        sumsq = torch.empty(n, dtype=torch.float32, device=device)
        _cosine_topk_kernel[(q_blocks, splits)](
            xq, xq.stride(0), inv_q, q,
            tile, tile.stride(0), n, d,
            keys_per_split, offset,
            sumsq, out_s, out_i,
            K=k, KP=kp, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast,
            num_warps=num_warps,
        )
        return out_s, out_i, sumsq, splits

    smallest_sumsq = SMALLEST_TRUSTED_NORM**2
    for tile, offset in iter_key_blocks(keys, d, tile_rows):
        tile = tile.to(device, non_blocking=True)
        if tile.dtype == torch.float64:
            tile = scaled_rows_and_inverse_norms(tile, "keys", offset)[0]
        if tile.stride(1) != 1:
            tile = tile.contiguous()
        out_s, out_i, sumsq, splits = run_tile(tile, offset)
        flagged = ~torch.isfinite(sumsq) | (sumsq < smallest_sumsq)
        if bool(flagged.any()):
            # Rare: rows whose squares left float32's normal range (or inf/NaN, which raise
            # here) are rescaled by powers of two, exactly, and the tile is run again. Zero rows
            # are flagged too but need nothing; only the flagged rows are read.
            fixed, rows = rescale_untrusted_rows(tile, flagged.nonzero().flatten(), "keys", offset)
            if rows.numel():
                out_s, out_i, sumsq, splits = run_tile(fixed.contiguous(), offset)
        bad = (~torch.isfinite(sumsq)).nonzero().flatten()
        if bad.numel():
            raise non_finite_rows_error("keys", [offset + int(r) for r in bad[:5].tolist()])
        cand_s = out_s[:, :, :k].permute(1, 0, 2).reshape(q, splits * k)  # [Q, splits*k]
        cand_i = out_i[:, :, :k].permute(1, 0, 2).reshape(q, splits * k)
        run_s, run_i = merge_topk(run_s, run_i, cand_s, cand_i, k)
    return run_s, run_i
