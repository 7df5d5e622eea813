"""The "triton" implementation of every operator (engine/ops.py's table), for CUDA devices."""
from __future__ import annotations

from cuda_fallback.attention import attention
from cuda_fallback.cross_entropy import linear_cross_entropy
from cuda_fallback.rms_norm import rms_norm
from cuda_fallback.rotary import rotary
from cuda_fallback.swiglu import swiglu
from engine.ops import fused_adamw


OPERATORS = {"rms_norm": rms_norm, "rotary": rotary, "swiglu": swiglu, "attention": attention,
             "linear_cross_entropy": linear_cross_entropy, "adamw": fused_adamw}
