"""Linear + cross-entropy over the vocabulary in row chunks, never materialising the full
(tokens x vocab) logits: plain torch, so it runs on every device (the CPU path for long sequences,
the NPU path, and the reference the Triton version shares its checks and chunking with).

Forward keeps only the per-row log-sum-exp; backward recomputes each chunk's logits and turns them
into the gradient in place. Peak extra memory is one chunk of logits (a few copies) instead of
several full [N, V] tensors. Semantics match engine.ops.linear_cross_entropy: mean over targets !=
ignore_index, fp32 loss, matmuls in the autocast dtype when autocast is on.
"""
from __future__ import annotations

import torch

# Rows per chunk are chosen so a chunk of logits is about as large as the hidden states (and at
# least this many elements): big enough matmuls, small enough to never dominate memory.
MIN_CHUNK_ELEMENTS = 1 << 22


def check_inputs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> None:
    """Shape/dtype/range checks shared by every linear_cross_entropy implementation."""
    if h.dim() != 2:
        raise ValueError(f"linear_cross_entropy.h: expected [N, C], got shape {tuple(h.shape)}")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"linear_cross_entropy.weight: expected [V, {h.shape[1]}], got {tuple(weight.shape)}")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"linear_cross_entropy.targets: expected shape [{h.shape[0]}], got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_cross_entropy.targets: expected an integer tensor, got {targets.dtype}")
    bad = ((targets < 0) | (targets >= weight.shape[0])) & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"linear_cross_entropy.targets: values must lie in [0, {weight.shape[0]}) or equal "
                         f"ignore_index={ignore_index}; got {targets[bad][:4].tolist()}")


def chunk_rows(n_rows: int, vocab: int, hidden: int, requested: int | None = None) -> int:
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"linear_cross_entropy.chunk_size: must be positive, got {requested}")
        return min(requested, max(n_rows, 1))
    budget = max(n_rows * hidden, MIN_CHUNK_ELEMENTS)
    return max(1, min(n_rows, budget // vocab))


def compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick for F.linear(h, weight)."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, rows: int):
        dtype = compute_dtype(h, weight)
        device_type = h.device.type
        with torch.autocast(device_type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            valid = targets != ignore_index
            safe_targets = torch.where(valid, targets, 0).long()
            lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], rows):
                end = start + rows
                logits = (hc[start:end] @ wc.T).float()
                lse[start:end] = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe_targets[start:end, None]).squeeze(1)
                loss_sum += ((lse[start:end] - picked) * valid[start:end]).sum()
                del logits
            n_valid = valid.sum()
        ctx.save_for_backward(h, weight, safe_targets, valid, lse, n_valid)
        ctx.dtype, ctx.rows = dtype, rows
        return loss_sum / n_valid  # nan when every target is ignored, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss):
        h, weight, targets, valid, lse, n_valid = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, rows = ctx.dtype, ctx.rows
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            # d loss / d logits = (softmax - onehot) * grad / n_valid on valid rows, 0 elsewhere
            row_scale = valid.float() * (grad_loss.float() / n_valid.clamp(min=1))
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for start in range(0, h.shape[0], rows):
                end = start + rows
                g = (hc[start:end] @ wc.T).float()
                g.sub_(lse[start:end, None]).exp_()
                g.scatter_add_(1, targets[start:end, None], torch.full_like(g[:, :1], -1.0))
                g.mul_(row_scale[start:end, None])
                g = g.to(dtype)
                if need_h:
                    grad_h[start:end] = g @ wc
                if need_w:  # accumulate in fp32 across chunks
                    if dtype == torch.float32:
                        grad_w.addmm_(g.T, hc[start:end])
                    else:
                        grad_w.add_(g.T @ hc[start:end])
                del g
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    """chunk_size: rows per chunk (default: a chunk of logits about the size of h, >= 4M elements)."""
    check_inputs(h, weight, targets, ignore_index)
    rows = chunk_rows(h.shape[0], weight.shape[0], h.shape[1], chunk_size)
    return ChunkedLinearCrossEntropy.apply(h, weight, targets, ignore_index, rows)


OPERATORS = {"linear_cross_entropy": linear_cross_entropy}

__all__ = ["linear_cross_entropy", "check_inputs", "chunk_rows", "compute_dtype", "OPERATORS"]
