"""Causal (grouped-query) attention on CUDA: flash-attn when installed and the inputs qualify
(fp16/bf16, head_dim <= 256), else torch's SDPA with the flash backend first in priority.
No Triton kernel of our own: both are faster than what we would write and have backward passes."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# priority order; MATH last so every shape/dtype (fp32 in the interpreter tests, too) still runs
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]


@lru_cache(maxsize=1)
def flash_attn_func():
    try:
        from flash_attn import flash_attn_func as fn
        return fn
    except Exception:  # not installed, or built against another torch/CUDA
        return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, Hq, T, D]."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"attention: query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    if torch.are_deterministic_algorithms_enabled():  # deterministic: true (engine/determinism.py)
        with sdpa_kernel([SDPBackend.MATH]):  # the fused backends' backward passes vary in reduction order
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    fa = flash_attn_func()
    if fa is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        # flash-attn takes [B, T, H, D] and handles GQA itself; for q/k/v viewed from a [B, T, H, D]
        # projection the transposes are free
        return fa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
    with sdpa_kernel(SDPA_BACKENDS, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
