"""Arguments for torch_npu.npu_fusion_attention, built by a pure function so they are tested on any
machine. Facts from the op-plugin documentation (torch_npu 2.x, Atlas A2 / 910B and newer):
- `scale` defaults to 1.0: pass 1/sqrt(head_dim) explicitly.
- a True entry of `atten_mask` masks the position out.
- causal: sparse_mode 2 (leftUpCausal, the same alignment as SDPA's is_causal) with the fixed
  compressed mask triu(ones(2048, 2048), 1), whatever the sequence length; pre/next_tockens are
  ignored in that mode.
- layouts BNSD, BSND, BSH, SBH, and TND (packed tokens with cumulative actual_seq_qlen/kvlen).
- grouped-query heads when n_q / n_kv is a whole number; n_q at most 256.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

LAYOUTS = ("BNSD", "BSND", "BSH", "SBH", "TND")
CAUSAL_SPARSE_MODE = 2
COMPRESSED_MASK_SIZE = 2048
MAX_Q_HEADS = 256
MAX_TOKENS = 2**31 - 1


def causal_mask(device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed compressed causal mask sparse_mode 2/3 expects (True = masked out)."""
    return _causal_mask(str(device))


@lru_cache(maxsize=8)
def _causal_mask(device: str) -> torch.Tensor:
    return torch.triu(torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool, device=device), 1)


def _heads_and_dim(name: str, shape: tuple[int, ...], layout: str, n_heads: int | None) -> tuple[int, int, int]:
    """(heads, head_dim, seq_len) of a q/k/v shape in `layout`."""
    dims = {"BNSD": 4, "BSND": 4, "BSH": 3, "SBH": 3, "TND": 3}[layout]
    if len(shape) != dims:
        raise ValueError(f"attention.{name}: layout {layout} needs a {dims}-d tensor, got shape {tuple(shape)}")
    if layout == "BNSD":
        return shape[1], shape[3], shape[2]
    if layout == "BSND":
        return shape[2], shape[3], shape[1]
    if layout == "TND":
        return shape[1], shape[2], shape[0]
    if n_heads is None or n_heads <= 0 or shape[2] % n_heads:
        raise ValueError(f"attention.{name}_heads: layout {layout} packs heads into H={shape[2]}; give a head "
                         f"count that divides it, got {n_heads}")
    seq = shape[1] if layout == "BSH" else shape[0]
    return n_heads, shape[2] // n_heads, seq


def fusion_attention_args(q_shape, k_shape, layout: str = "BNSD", *, q_heads: int | None = None,
                          kv_heads: int | None = None, cu_seqlens: list[int] | None = None) -> dict:
    """Keyword arguments for a causal npu_fusion_attention call (all but q, k, v and atten_mask,
    which is `causal_mask(device)`). q_heads/kv_heads only for BSH/SBH; cu_seqlens (cumulative
    sequence ends, e.g. [2, 4, 6]) only for TND."""
    if layout not in LAYOUTS:
        raise ValueError(f"attention.layout: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    nq, dq, sq = _heads_and_dim("q", tuple(q_shape), layout, q_heads)
    nk, dk, sk = _heads_and_dim("k", tuple(k_shape), layout, kv_heads)
    if dq != dk:
        raise ValueError(f"attention.k: head_dim {dk} differs from q's {dq}")
    if sq != sk:
        raise ValueError(f"attention.k: causal self-attention needs equal q/k lengths, got {sq} and {sk}")
    if nq % nk:
        raise ValueError(f"attention.n_kv_head: query heads {nq} are not a whole multiple of key/value heads {nk}")
    if nq > MAX_Q_HEADS:
        raise ValueError(f"attention.n_head: npu_fusion_attention supports at most {MAX_Q_HEADS} query heads, got {nq}")
    args = {"head_num": nq, "input_layout": layout, "scale": 1.0 / math.sqrt(dq),
            "sparse_mode": CAUSAL_SPARSE_MODE, "pre_tockens": MAX_TOKENS, "next_tockens": 0}
    if layout == "TND":
        if not cu_seqlens:
            raise ValueError("attention.cu_seqlens: layout TND needs the cumulative sequence ends")
        ends = [int(e) for e in cu_seqlens]
        if any(b < a for a, b in zip([0, *ends], ends)) or ends[-1] != sq:
            raise ValueError(f"attention.cu_seqlens: must be non-decreasing and end at T={sq}, got {ends}")
        args["actual_seq_qlen"] = ends
        args["actual_seq_kvlen"] = list(ends)
    elif cu_seqlens is not None:
        raise ValueError(f"attention.cu_seqlens: only for layout TND, not {layout}")
    return args
