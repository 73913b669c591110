"""Triton kernel for masked mean pooling, and its fused chosen-minus-rejected variant.

Design: one program per (row b, block of BLOCK_D features). It walks the T positions of row b in
blocks of BLOCK_T, loads the fp32 weights (the mask) and only the hidden rows whose weight is
non-zero (a masked load: prompt and padding positions are never read from memory), converts them
to fp32 (bf16 arithmetic is never used: that keeps the interpreter correct too) and accumulates
``sum_t w_t * h[b, t, :]`` and ``sum_t w_t`` in fp32. With ``DIFF`` set, the same program then
pools the rejected response of pair b and stores the difference of the two means, so the pair
vector v_d = mean(chosen) - mean(rejected) costs one launch and one [B, d] write.

Hidden tensors are read through their strides, so ``hidden[:B]`` / ``hidden[B:]`` views of one
padded batch need no copy; only the feature dimension must be contiguous. Empty masks are detected
on the host before launch (the caller raises :class:`EmptyMaskError`), so the division never sees 0.
Plain pointer arithmetic only (no ``make_block_ptr``): runs on triton 3.6 and 3.7.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from headwater.kernels._dispatch import triton_interpreter_enabled


@triton.jit
def _masked_mean_pool_kernel(
    h_ptr, h_stride_b, h_stride_t,
    w_ptr, w_stride_b,
    T, d,
    h2_ptr, h2_stride_b, h2_stride_t,
    w2_ptr, w2_stride_b,
    T2,
    out_ptr, out_stride_b,
    DIFF: tl.constexpr,  # pool a second (rejected) input and store the difference
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # int64 program ids: B * T * d exceeds 2**31 on real batches (triton issue #1058)
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < d

    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    count = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        w = tl.load(w_ptr + row * w_stride_b + offs_t, mask=offs_t < T, other=0.0)
        take = (w != 0.0)[:, None] & d_ok[None, :]
        h = tl.load(
            h_ptr + row * h_stride_b + offs_t[:, None].to(tl.int64) * h_stride_t + offs_d[None, :],
            mask=take,
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(h * w[:, None], axis=0)
        count += w
    pooled = acc / tl.sum(count, axis=0)

    if DIFF:
        acc2 = tl.zeros([BLOCK_D], dtype=tl.float32)
        count2 = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, T2, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            w = tl.load(w2_ptr + row * w2_stride_b + offs_t, mask=offs_t < T2, other=0.0)
            take = (w != 0.0)[:, None] & d_ok[None, :]
            h = tl.load(
                h2_ptr + row * h2_stride_b + offs_t[:, None].to(tl.int64) * h2_stride_t + offs_d[None, :],
                mask=take,
                other=0.0,
            ).to(tl.float32)
            acc2 += tl.sum(h * w[:, None], axis=0)
            count2 += w
        pooled = pooled - acc2 / tl.sum(count2, axis=0)

    tl.store(out_ptr + row * out_stride_b + offs_d, pooled, mask=d_ok)


def _prepare(hidden: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    return hidden, weights.contiguous()


def _block_sizes(d: int) -> tuple[int, int]:
    if triton_interpreter_enabled():
        # the interpreter's cost grows with the number of program instances: few, large blocks
        return 64, min(triton.next_power_of_2(d), 1024)
    return 16, min(triton.next_power_of_2(d), 256)


def masked_mean_pool_triton(
    hidden: torch.Tensor,
    weights: torch.Tensor,
    hidden_rejected: torch.Tensor | None = None,
    weights_rejected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the pooling kernel. ``weights`` [B, T] float32 with no all-zero row (checked by the
    caller); with ``hidden_rejected`` [B, T2, d] / ``weights_rejected`` [B, T2], returns the fused
    difference. Returns [B, d] float32 on ``hidden.device``."""
    hidden, weights = _prepare(hidden, weights)
    B, T, d = hidden.shape
    diff = hidden_rejected is not None
    if diff:
        hidden2, weights2 = _prepare(hidden_rejected, weights_rejected)
    else:
        hidden2, weights2 = hidden, weights  # unused when DIFF is off
    out = torch.empty(B, d, dtype=torch.float32, device=hidden.device)
    if B == 0 or d == 0:
        return out
    block_t, block_d = _block_sizes(d)
    grid = (B, triton.cdiv(d, block_d))
    _masked_mean_pool_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1),
        weights, weights.stride(0),
        T, d,
        hidden2, hidden2.stride(0), hidden2.stride(1),
        weights2, weights2.stride(0),
        hidden2.shape[1],
        out, out.stride(0),
        DIFF=diff,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
    )
    return out
