"""The "npu" implementation of every operator (engine/ops.py's table): torch_npu's fused kernels.

Written against the op-plugin documentation for torch 2.13 / torch_npu 2.13 / CANN 8.x (Atlas A2,
910B); not executed in CI. torch_npu is looked up at call time, so this module imports anywhere.
- rms_norm: torch_npu.npu_rms_norm(x, gamma, epsilon) -> (y, rstd)
- rotary: torch_npu.npu_rotary_mul(x, r1, r2) (rotate-half mode), cos/sin broadcast as 4-d
- swiglu: torch_npu.npu_swiglu(x, dim=-1): silu of the first half times the second ([gate, up])
- attention: torch_npu.npu_fusion_attention, arguments from npu_kernels.fusion_attention
- linear_cross_entropy: the plain-torch chunked version (no fused linear+CE kernel in torch_npu)
- adamw: torch.optim.AdamW(fused=True), which torch_npu dispatches to its fused ApplyAdamW kernel; where
  that fails (a torch_npu without the kernel refuses fused=True, or fails at the first step) foreach
On a chip before Atlas A2 (910A) engine/backend.py picks the reference swiglu and attention: npu_swiglu
and npu_fusion_attention are documented for A2/A3 only.
"""
from __future__ import annotations

import logging

import torch

from engine import ops as reference
from engine.chunked_ops import linear_cross_entropy
from npu_kernels.fusion_attention import causal_mask, fusion_attention_args
from npu_kernels.runtime import torch_npu_module

log = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch_npu_module("rms_norm").npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)[0]


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]. A view transposed from [B, T, H, D] (what the projections give) runs as BSND
    without a copy; anything else as a contiguous BNSD."""
    npu = torch_npu_module("rotary")
    T, D = x.shape[-2:]
    cos, sin = cos.reshape(T, D).to(x.dtype), sin.reshape(T, D).to(x.dtype)
    bsnd = x.transpose(1, 2)
    if bsnd.is_contiguous():
        return npu.npu_rotary_mul(bsnd, cos[None, :, None], sin[None, :, None]).transpose(1, 2)
    return npu.npu_rotary_mul(x.contiguous(), cos[None, None], sin[None, None])


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    return torch_npu_module("swiglu").npu_swiglu(gate_up, dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, Hq, T, D], causal."""
    npu = torch_npu_module("attention")
    if all(t.transpose(1, 2).is_contiguous() for t in (q, k, v)):
        q, k, v, layout, back = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), "BSND", True
    else:
        q, k, v, layout, back = q.contiguous(), k.contiguous(), v.contiguous(), "BNSD", False
    args = fusion_attention_args(q.shape, k.shape, layout)
    out = npu.npu_fusion_attention(q, k, v, atten_mask=causal_mask(q.device), **args)[0]
    return out.transpose(1, 2) if back else out


class _FusedOrForeachAdamW(torch.optim.AdamW):
    """AdamW(fused=True) that switches to foreach if the fused kernel fails at its first step."""

    def step(self, closure=None):
        if getattr(self, "_checked", False):
            return super().step(closure)
        # a resume loads moments before the first step; the failed fused step may already have counted itself
        steps = {p: st["step"].clone() for p, st in self.state.items() if "step" in st}
        try:
            out = super().step(closure)
        except (RuntimeError, NotImplementedError) as exc:
            log.warning("adamw: the fused kernel failed on its first step (%s); using foreach", exc)
            for p in list(self.state):
                if p in steps:
                    self.state[p]["step"] = steps[p]
                else:  # created by the failed step: the foreach step creates it again
                    del self.state[p]
            for group in self.param_groups:
                group["fused"], group["foreach"] = False, True
            self.defaults.update(fused=False, foreach=True)
            out = super().step(closure)
        self._checked = True
        return out


def adamw(param_groups, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
    """Fused AdamW where torch_npu provides it, else the reference (foreach) one."""
    groups = list(param_groups)
    try:
        return _FusedOrForeachAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, NotImplementedError) as exc:  # the constructor refuses devices without the kernel
        log.warning("adamw: fused=True refused here (%s); using foreach", exc)
        return reference.adamw(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPERATORS = {"rms_norm": rms_norm, "rotary": rotary, "swiglu": swiglu, "attention": attention,
             "linear_cross_entropy": linear_cross_entropy, "adamw": adamw}
