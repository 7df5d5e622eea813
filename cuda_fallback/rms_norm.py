"""RMSNorm in Triton: y = x / sqrt(mean(x^2) + eps) * w, computed in fp32, stored in x's dtype.

Forward saves only x and the per-row 1/rms. Backward, per row (xhat = x * rstd, g = dy * w):
  dx = rstd * (g - xhat * mean(g * xhat))
  dw = sum over rows of dy * xhat   (per-program partial sums, reduced in torch)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cuda_fallback.launch import check_device, row_programs

MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, n_rows, n_cols, stride_x, stride_y, eps,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    row_mask, col_mask = rows < n_rows, cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PARTIAL, n_rows, n_cols, rows_per_program,
                  stride_dy, stride_x, stride_dx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program  # rows_per_program is a multiple of BLOCK_M
    for start in range(0, rows_per_program, BLOCK_M):
        rows = (first + start + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * xhat, axis=1) / n_cols
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=col_mask)


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """(rows per program, padded width, warps). One row of a wide block held by the default 4 warps spills
    registers (65,536 fp32 values over 128 threads), so warps grow with the width as in Liger's
    calculate_settings."""
    if n_cols > MAX_HIDDEN:
        raise ValueError(f"rms_norm: hidden size {n_cols} exceeds the kernel's limit {MAX_HIDDEN}")
    block_n = triton.next_power_of_2(n_cols)
    num_warps = 32 if block_n >= 32768 else 16 if block_n >= 8192 else 8 if block_n >= 2048 else 4
    return max(1, min(16, 4096 // block_n)), block_n, num_warps


class TritonRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        n_rows, n_cols = x2.shape
        block_m, block_n, num_warps = _blocks(n_cols)
        y = torch.empty_like(x2)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        _rms_norm_fwd[(triton.cdiv(n_rows, block_m),)](x2, weight, y, rstd, n_rows, n_cols, x2.stride(0),
                                                        y.stride(0), eps, BLOCK_M=block_m, BLOCK_N=block_n,
                                                        num_warps=num_warps)
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).contiguous()
        n_rows, n_cols = x2.shape
        block_m, block_n, num_warps = _blocks(n_cols)
        n_blocks = triton.cdiv(n_rows, block_m)
        programs = row_programs(n_blocks, x2.device)
        rows_per_program = triton.cdiv(n_blocks, programs) * block_m
        programs = triton.cdiv(n_rows, rows_per_program)
        dx = torch.empty_like(x2)
        dw_partial = torch.empty(programs, n_cols, dtype=torch.float32, device=x2.device)
        _rms_norm_bwd[(programs,)](dy2, x2, weight, rstd, dx, dw_partial, n_rows, n_cols, rows_per_program,
                                   dy2.stride(0), x2.stride(0), dx.stride(0), BLOCK_M=block_m, BLOCK_N=block_n,
                                   num_warps=num_warps)
        return dx.view(dy.shape), dw_partial.sum(0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm.weight: expected shape [{x.shape[-1]}], got {tuple(weight.shape)}")
    check_device("rms_norm", x, weight)
    return TritonRMSNorm.apply(x, weight, eps)
