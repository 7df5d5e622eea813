"""Linear + cross-entropy over the vocabulary in row chunks, never materialising the full
(tokens x vocab) logits. Plain torch, so it runs on every device: the CPU path for long sequences,
the NPU path, and the frame the Triton version (cuda_fallback/cross_entropy.py) plugs its kernel into.

Each chunk's logits are turned into that chunk's per-row losses and d loss / d logits, which two
matmuls fold into grad_h and grad_w right away; backward only scales them by the incoming gradient.
That is 3 matmuls in all like eager (recomputing the logits in backward would be a 4th: measured
1.8x slower than eager on CPU, against 0.85x for this), and the loss is the model's last op, so
holding grad_h / grad_w from forward to backward adds nothing to the step's peak. Peak memory is a
chunk of logits (a few copies) instead of several full [N, V] tensors.

Semantics match engine.ops.linear_cross_entropy: mean over targets != ignore_index (nan when all
are ignored), fp32 loss, matmuls in the autocast dtype when autocast is on.
"""
from __future__ import annotations

from typing import Callable

import torch

# Rows per chunk are chosen so a chunk of logits is about as large as the hidden states (and at
# least MIN_CHUNK_ELEMENTS), small enough to never dominate memory; and at least MIN_CHUNK_ROWS,
# because thinner matmuls against the [V, C] head are slow (measured on CPU: 87 rows 1.5x slower).
MIN_CHUNK_ELEMENTS = 1 << 22
MIN_CHUNK_ROWS = 256

# chunk_fn(logits [rows, V], targets [rows], ignore_index, need_grad)
#   -> (per-row fp32 loss, d (summed loss) / d logits in the logits' dtype, or None without need_grad)
ChunkFn = Callable[[torch.Tensor, torch.Tensor, int, bool], tuple[torch.Tensor, torch.Tensor | None]]


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
    message = (f"linear_cross_entropy.targets: values must lie in [0, {weight.shape[0]}) or equal "
               f"ignore_index={ignore_index}")
    if torch.compiler.is_compiling() or targets.device.type == "cuda":
        # checked where the targets are, without a host sync (inside a compiled graph `bool()` would also
        # break the graph in two); the error is raised when the step's result is next read. Not on an NPU:
        # torch_npu's support for this op is undocumented, so there the check below waits, once a micro-batch
        torch._assert_async(~bad.any(), message)
    elif bool(bad.any()):  # eager on a CPU: nothing to wait for, and the error can show the values
        raise ValueError(f"{message}; got {targets[bad][:4].tolist()}")


def chunk_rows(n_rows: int, vocab: int, hidden: int, requested: int | None = None) -> int:
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"linear_cross_entropy.chunk_size: must be positive, got {requested}")
        return min(requested, max(n_rows, 1))
    budget = max(n_rows * hidden, MIN_CHUNK_ELEMENTS)
    return max(1, min(n_rows, max(budget // vocab, MIN_CHUNK_ROWS)))


def compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick for F.linear(h, weight)."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def safe_targets(targets: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, 1] columns to gather: ignored rows read column 0, and an out-of-range target (which
    check_inputs' device-side check reports) reads an in-range column rather than out of bounds, so that
    check's error is the one raised."""
    return torch.where(valid, targets, 0).clamp(0, vocab - 1).long()[:, None]


def torch_chunk_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                     need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    valid = targets != ignore_index
    safe = safe_targets(targets, valid, logits.shape[1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss = -logp.gather(1, safe).squeeze(1) * valid
    if not need_grad:
        return loss, None
    grad = logp.exp_()  # softmax, in the log-softmax buffer
    grad.scatter_add_(1, safe, torch.full_like(grad[:, :1], -1.0))
    grad.mul_(valid[:, None])  # ignored rows: zero
    return loss, grad.to(logits.dtype)


def fused_chunk_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                     need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch_chunk_loss written for inductor's CPU fusion (used inside compiled graphs on a CPU): one
    exponential per logit, whose row sum gives the loss and whose scaled value is the gradient, written
    once in the logits' dtype, the target column's p - 1 taken in fp32 before that rounding (p - 1
    cancels, so it is not taken from the rounded row). torch_chunk_loss compiles into a log-softmax that
    exponentiates twice, an fp32 gradient and a second pass to cast and mask it: a [2048, 2048] bf16 chunk
    took 1.8-1.9 against 3.1-4.0 ms compiled, a [2048, 8000] one 7.6-8.3 against 11.4 ms or more (2 threads,
    Zen 4)."""
    x = logits.float()
    valid = targets != ignore_index
    safe = safe_targets(targets, valid, x.shape[1])
    row_max = x.amax(-1, keepdim=True)
    exps = torch.exp(x - row_max)
    row_sum = exps.sum(-1, keepdim=True)
    target_logit = x.gather(1, safe)
    loss = (row_max + torch.log(row_sum) - target_logit).squeeze(1) * valid
    if not need_grad:
        return loss, None
    scale = valid[:, None].float()  # ignored rows: zero
    probs = exps * (scale / row_sum)
    # p - 1 at the target column, chosen inside the same fused loop: a scatter into the gradient is an
    # ATen fallback (a copy of the chunk, then a serial scatter) under the deterministic algorithms compiled
    # CPU training runs with; columns compared in int32, which inductor vectorises
    is_target = torch.arange(x.shape[1], dtype=torch.int32, device=x.device) == safe.int()
    return loss, torch.where(is_target, probs - scale, probs).to(logits.dtype)


def default_chunk_fn(device: torch.device) -> ChunkFn:
    return fused_chunk_loss if torch.compiler.is_compiling() and device.type == "cpu" else torch_chunk_loss


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, rows: int, need_grad: bool, chunk_fn: ChunkFn):
        need_h, need_w = need_grad and ctx.needs_input_grad[0], need_grad and ctx.needs_input_grad[1]
        dtype = compute_dtype(h, weight)
        n_rows = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            targets = targets.contiguous()
            n_valid = (targets != ignore_index).sum()
            row_loss = torch.empty(n_rows, dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for start in range(0, n_rows, rows):
                end = min(start + rows, n_rows)
                logits = hc[start:end] @ wc.T
                row_loss[start:end], grad = chunk_fn(logits, targets[start:end], ignore_index,
                                                     need_h or need_w)
                del logits
                if need_h:
                    grad_h[start:end] = grad @ wc
                if need_w:  # accumulate in fp32 across chunks
                    if dtype == torch.float32:
                        grad_w.addmm_(grad.T, hc[start:end])
                    else:
                        grad_w.add_(grad.T @ hc[start:end])
                del grad
        # the gradients are of the summed loss; backward divides by the count of valid targets, a tensor, so
        # no host sync is needed for it (and in fp16 the probabilities, at most 1, no longer underflow as
        # they could once divided by ~10^4 tokens)
        ctx.save_for_backward(n_valid, *(g for g in (grad_h, grad_w) if g is not None))
        ctx.needs, ctx.weight_dtype = (need_h, need_w), weight.dtype
        return row_loss.sum() / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        n_valid, *grads = ctx.saved_tensors
        saved = iter(grads)
        need_h, need_w = ctx.needs
        scale = grad_loss / n_valid.clamp(min=1)
        grad_h = next(saved) * scale if need_h else None
        grad_w = (next(saved) * scale).to(ctx.weight_dtype) if need_w else None
        return grad_h, grad_w, None, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         chunk_size: int | None = None, chunk_fn: ChunkFn | None = None) -> torch.Tensor:
    """chunk_size: rows per chunk (default: see chunk_rows); chunk_fn: default_chunk_fn's choice."""
    check_inputs(h, weight, targets, ignore_index)
    rows = chunk_rows(h.shape[0], weight.shape[0], h.shape[1], chunk_size)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(h, weight, targets, ignore_index, rows, need_grad,
                                           chunk_fn or default_chunk_fn(h.device))


OPERATORS = {"linear_cross_entropy": linear_cross_entropy}
