"""Fused linear + cross-entropy: engine.chunked_ops' row-chunk loop (the full tokens x vocab logits
never exist, gradients folded into grad_h / grad_w during forward) with its per-chunk step done by
one Triton kernel: an online log-sum-exp pass over the vocabulary, then a pass that overwrites the
chunk's logits in place with d loss / d logits, so the chunk buffer is reused as the gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cuda_fallback.launch import check_device
from engine import chunked_ops as chunked

BLOCK_V = 1024


@triton.jit
def _ce_loss_and_grad(LOGITS, stride_row, TARGETS, LOSS, vocab, ignore_index,
                      BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride_row
    target = tl.load(TARGETS + row).to(tl.int64)
    valid = target != ignore_index
    # pass 1: online log-sum-exp over the vocabulary
    m = float("-inf")
    s = 0.0
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    # in range even for a bad target (engine.chunked_ops.safe_targets): the device-side check reports it
    safe_target = tl.where(valid, tl.minimum(tl.maximum(target, 0), vocab - 1), 0)
    x_target = tl.load(ptr + safe_target).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))
    # pass 2: the logits become softmax - onehot (the gradient of the row's loss), zero on ignored rows
    if WRITE_GRAD:
        scale = tl.where(valid, 1.0, 0.0)
        for start in range(0, vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            col_mask = cols < vocab
            x = tl.load(ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
            tl.store(ptr + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=col_mask)


def triton_chunk_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                      need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """engine.chunked_ops' chunk step in one kernel launch: the logits buffer becomes the gradient."""
    logits = logits.contiguous()
    loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    _ce_loss_and_grad[(logits.shape[0],)](logits, logits.stride(0), targets, loss, logits.shape[1], ignore_index,
                                          BLOCK_V=BLOCK_V, WRITE_GRAD=need_grad)
    return loss, (logits if need_grad else None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    check_device("linear_cross_entropy", h, weight)
    return chunked.linear_cross_entropy(h, weight, targets, ignore_index, chunk_size, chunk_fn=triton_chunk_loss)
