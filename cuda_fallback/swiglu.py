"""SwiGLU in Triton on a fused [gate, up] projection: y = silu(gate) * up (torch_npu.npu_swiglu order).

Forward saves only the input; backward recomputes the sigmoid:
  d gate = dy * up * s * (1 + gate * (1 - s)),  d up = dy * gate * s,  with s = sigmoid(gate)
The grid is flat over the output elements, so any [..., 2F] shape is one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cuda_fallback.launch import check_device

BLOCK = 1024


@triton.jit
def _swiglu_fwd(GU, Y, n_elements, F, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    gate_at = (offs // F) * (2 * F) + offs % F
    g = tl.load(GU + gate_at, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + gate_at + F, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, GU, DGU, n_elements, F, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    gate_at = (offs // F) * (2 * F) + offs % F
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GU + gate_at, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + gate_at + F, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    d_gate = dy * u * s * (1.0 + g * (1.0 - s))
    d_up = dy * g * s
    tl.store(DGU + gate_at, d_gate.to(DGU.dtype.element_ty), mask=mask)
    tl.store(DGU + gate_at + F, d_up.to(DGU.dtype.element_ty), mask=mask)


class TritonSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        gu = gate_up.contiguous()
        F = gu.shape[-1] // 2
        y = torch.empty((*gu.shape[:-1], F), dtype=gu.dtype, device=gu.device)
        n = y.numel()
        _swiglu_fwd[(triton.cdiv(n, BLOCK),)](gu, y, n, F, BLOCK=BLOCK)
        ctx.save_for_backward(gu)
        return y

    @staticmethod
    def backward(ctx, dy):
        (gu,) = ctx.saved_tensors
        dy = dy.contiguous()
        dgu = torch.empty_like(gu)
        n = dy.numel()
        _swiglu_bwd[(triton.cdiv(n, BLOCK),)](dy, gu, dgu, n, gu.shape[-1] // 2, BLOCK=BLOCK)
        return dgu


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    if gate_up.shape[-1] % 2:
        raise ValueError(f"swiglu.gate_up: last dim must be even ([gate, up]), got {tuple(gate_up.shape)}")
    check_device("swiglu", gate_up)
    return TritonSwiGLU.apply(gate_up)
