"""Fused linear + cross-entropy: row chunks of logits go through one Triton kernel that computes
each row's loss and overwrites the logits in place with d loss / d logits, so the full
(tokens x vocab) logits never exist and the chunk buffer is reused as the gradient.

The gradients w.r.t. h and the projection weight are computed during the forward (two matmuls per
chunk) and only scaled in backward: 3 matmuls in all, like eager, with no recomputation. The loss
is the last op of the model, so holding grad_h / grad_w until backward costs no extra peak.
Chunking and input checks are shared with the plain-torch version (engine.chunked_ops).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cuda_fallback.launch import check_device
from engine.chunked_ops import check_inputs, chunk_rows, compute_dtype

BLOCK_V = 1024


@triton.jit
def _ce_loss_and_grad(LOGITS, stride_row, TARGETS, LOSS, vocab, ignore_index, grad_scale,
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
    safe_target = tl.where(valid, target, 0)
    x_target = tl.load(ptr + safe_target).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))
    # pass 2: the logits become (softmax - onehot) * grad_scale, zero on ignored rows
    if WRITE_GRAD:
        scale = tl.where(valid, grad_scale, 0.0)
        for start in range(0, vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            col_mask = cols < vocab
            x = tl.load(ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
            tl.store(ptr + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=col_mask)


class TritonLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, rows: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = compute_dtype(h, weight)
        n_rows, vocab = h.shape[0], weight.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            targets = targets.contiguous()
            n_valid = (targets != ignore_index).sum()
            # a host-side scale keeps the kernel simple; one sync per step is negligible
            grad_scale = 1.0 / max(int(n_valid), 1)
            row_loss = torch.empty(n_rows, dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for start in range(0, n_rows, rows):
                end = min(start + rows, n_rows)
                logits = hc[start:end] @ wc.T  # [rows, V] in the compute dtype, overwritten by its gradient
                _ce_loss_and_grad[(end - start,)](logits, logits.stride(0), targets[start:end], row_loss[start:end],
                                                  vocab, ignore_index, grad_scale, BLOCK_V=BLOCK_V,
                                                  WRITE_GRAD=need_h or need_w)
                if need_h:
                    grad_h[start:end] = logits @ wc
                if need_w:
                    if dtype == torch.float32:
                        grad_w.addmm_(logits.T, hc[start:end])
                    else:
                        grad_w.add_(logits.T @ hc[start:end])
                del logits
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.needs, ctx.weight_dtype = (need_h, need_w), weight.dtype
        return row_loss.sum() / n_valid  # nan when every target is ignored, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        need_h, need_w = ctx.needs
        grad_h = next(saved) * grad_loss if need_h else None
        grad_w = (next(saved) * grad_loss).to(ctx.weight_dtype) if need_w else None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    check_inputs(h, weight, targets, ignore_index)
    check_device("linear_cross_entropy", h, weight)
    rows = chunk_rows(h.shape[0], weight.shape[0], h.shape[1], chunk_size)
    return TritonLinearCrossEntropy.apply(h, weight, targets, ignore_index, rows)
