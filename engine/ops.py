"""Operator table: the hot operators the model and trainer call, one implementation per backend.

The plain-torch functions here are the reference (the CPU path) and the ground truth every
fused implementation is tested against. Shapes:
  rms_norm(x[..., C], weight[C], eps) -> [..., C]
  rotary(x[B, H, T, D], cos[T, D], sin[T, D]) -> x rotated, rotate-half convention (HF Llama)
  swiglu(gate_up[..., 2F]) -> [..., F]: silu(first half) * second half (torch_npu.npu_swiglu order)
  attention(q[B, Hq, T, D], k[B, Hkv, T, D], v[B, Hkv, T, D]) -> [B, Hq, T, D], causal, Hq % Hkv == 0
  linear_cross_entropy(h[N, C], weight[V, C], targets[N], ignore_index) -> mean loss (fp32)
  adamw(param_groups, lr, betas, eps, weight_decay) -> torch.optim.Optimizer
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from engine.importing import import_object

OP_NAMES = ("rms_norm", "rotary", "swiglu", "attention", "linear_cross_entropy", "adamw")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def adamw(param_groups, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             foreach=True)


def fused_adamw(param_groups, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
    """The same update as `adamw` in one fused kernel per step (torch's _fused_adamw_: cuda, cpu, and
    npu through torch_npu); the "triton" and "npu" tables use it."""
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)


# Implementation name -> module exposing OPERATORS: dict[op name, callable]. Imported lazily so
# that torch_npu / triton are only touched when asked for.
IMPLEMENTATIONS: dict[str, str] = {
    "torch": "engine.ops",
    "chunked": "engine.chunked_ops",
    "cpu": "engine.cpu_ops",
    "triton": "cuda_fallback.ops",
    "liger": "cuda_fallback.liger",
    "npu": "npu_kernels.ops",
}

OPERATORS: dict[str, Callable] = {name: globals()[name] for name in OP_NAMES}


@dataclass(frozen=True)
class OpTable:
    backend: str
    chosen: dict[str, str] = field(default_factory=dict)  # op name -> implementation name
    rms_norm: Callable = rms_norm
    rotary: Callable = rotary
    swiglu: Callable = swiglu
    attention: Callable = attention
    linear_cross_entropy: Callable = linear_cross_entropy
    adamw: Callable = adamw


REFERENCE = OpTable(backend="cpu", chosen={name: "torch" for name in OP_NAMES})


def load_operator(impl: str, op: str) -> Callable:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"ops.{op}: unknown implementation {impl!r}; known: {sorted(IMPLEMENTATIONS)}")
    table = import_object(f"{IMPLEMENTATIONS[impl]}:OPERATORS", f"ops.{op}: implementation {impl!r}")
    if op not in table:
        raise ValueError(f"ops.{op}: implementation {impl!r} does not provide {op!r}")
    return table[op]


def build_table(backend: str, chosen: dict[str, str]) -> OpTable:
    return OpTable(backend=backend, chosen=dict(chosen),
                   **{op: load_operator(impl, op) for op, impl in chosen.items()})
