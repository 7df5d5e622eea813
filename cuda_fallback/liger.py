"""Liger-Kernel (PyPI `liger-kernel`) as an alternative implementation per operator, and the peer the
GPU benchmark compares our kernels with. Imported lazily: only when a table or the benchmark asks.
Liger has no attention or AdamW, and its kernels do not run under Triton's interpreter.

Adapters to our operator shapes (engine/ops.py):
- rms_norm: casting_mode="llama" (fp32 statistics, like the reference); in_place=False, because in
  place Liger writes dx over the incoming dy, safe only when nothing else reads that gradient.
- rotary: Liger rotates q and k together, in place, reading only the first half of cos/sin (which is
  duplicated in Llama's tables); we rotate one tensor, so k is a 1-head scratch copy, and q a copy too:
  Liger's transpose + contiguous is no copy for a q viewed from a [B, T, H, D] projection, so it would
  rotate the caller's tensor (the projection output autograd saved) in place.
- swiglu: takes gate and up separately, each contiguous.
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _functional():
    try:
        from liger_kernel.transformers import functional
    except Exception as exc:
        raise RuntimeError("ops: implementation 'liger' needs the liger-kernel package (pip install "
                           f"'tinyforge[cuda]'): {exc}") from exc
    return functional


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _functional().liger_rms_norm(x, weight, eps, offset=0.0, casting_mode="llama", in_place=False)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    scratch_k = x[:, :1].detach().clone()
    q = x.clone(memory_format=torch.preserve_format)  # keeps a projection view's layout: one copy, not two
    out = _functional().liger_rope(q, scratch_k, cos.reshape(1, *cos.shape[-2:]), sin.reshape(1, *sin.shape[-2:]))
    return out[0]


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return _functional().liger_swiglu(gate.contiguous(), up.contiguous())


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    return _functional().liger_fused_linear_cross_entropy(h, weight, targets, ignore_index=ignore_index)


OPERATORS = {"rms_norm": rms_norm, "rotary": rotary, "swiglu": swiglu, "linear_cross_entropy": linear_cross_entropy}
