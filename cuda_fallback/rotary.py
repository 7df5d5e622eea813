"""Rotary embedding in Triton, rotate-half convention (HF Llama), one kernel for both directions.

With x = [x1, x2] (halves of the head dim) and cos = [c1, c2], sin = [s1, s2]:
  forward:  y1 = x1*c1 - x2*s1,   y2 = x2*c2 + x1*s2
  backward: dx1 = dy1*c1 + dy2*s2, dx2 = dy2*c2 - dy1*s1   (the transpose of the same rotation)
x is read through its strides, so q/k views straight out of the projection need no copy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cuda_fallback.launch import check_device


@triton.jit
def _rotary_kernel(X, COS, SIN, Y, n_heads, seq_len, half,
                   sxb, sxh, sxt, sxd, syb, syh, syt, syd, sct, scd, sst, ssd,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BACKWARD: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // n_heads, bh % n_heads
    t = (tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = (t < seq_len)[:, None] & (d < half)[None, :]
    x_row = X + b.to(tl.int64) * sxb + h * sxh + t[:, None] * sxt
    x1 = tl.load(x_row + d[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + (d[None, :] + half) * sxd, mask=mask, other=0.0).to(tl.float32)
    c_row, s_row = COS + t[:, None] * sct, SIN + t[:, None] * sst
    c1 = tl.load(c_row + d[None, :] * scd, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(c_row + (d[None, :] + half) * scd, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(s_row + d[None, :] * ssd, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(s_row + (d[None, :] + half) * ssd, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y_row = Y + b.to(tl.int64) * syb + h * syh + t[:, None] * syt
    tl.store(y_row + d[None, :] * syd, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(y_row + (d[None, :] + half) * syd, y2.to(Y.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    B, H, T, D = x.shape
    half = D // 2
    block_d = triton.next_power_of_2(half)
    block_t = max(1, min(64, 4096 // block_d))
    y = torch.empty((B, H, T, D), dtype=x.dtype, device=x.device)
    _rotary_kernel[(B * H, triton.cdiv(T, block_t))](
        x, cos, sin, y, H, T, half, *x.stride(), *y.stride(), *cos.stride(), *sin.stride(),
        BLOCK_T=block_t, BLOCK_D=block_d, BACKWARD=backward)
    return y


class TritonRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, backward=True), None, None


def _as_table(name: str, t: torch.Tensor, T: int, D: int) -> torch.Tensor:
    """cos/sin as [T, D]: accepts [T, D] or the same with leading broadcast dims of size 1."""
    if t.dim() < 2 or tuple(t.shape[-2:]) != (T, D) or any(s != 1 for s in t.shape[:-2]):
        raise ValueError(f"rotary.{name}: expected shape [{T}, {D}] (optionally with leading 1s), got {tuple(t.shape)}")
    if t.requires_grad:
        raise ValueError(f"rotary.{name}: the Triton kernel does not differentiate cos/sin; pass a tensor without grad")
    return t.reshape(T, D)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary.x: expected [B, H, T, D] with an even D, got {tuple(x.shape)}")
    T, D = x.shape[-2:]
    cos, sin = _as_table("cos", cos, T, D), _as_table("sin", sin, T, D)
    check_device("rotary", x, cos, sin)
    return TritonRotary.apply(x, cos, sin)
