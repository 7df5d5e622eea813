"""CPU operators (the CPU table's `attention: cpu` and `adamw: cpu`).

AdamW: torch's fused CPU kernel, one vectorised pass over each parameter, instead of the foreach
update's six (lerp, mul, addcmul, sqrt, div, addcdiv), which each read and write every tensor. An
optimizer step, 2 threads, bf16-native Xeon, alternated in one process (bench/adamw_step.py): 0.8 vs
3.9 ms for the demo-scale model (1.0M parameters), 6.9 vs 30 ms for the bench row's (10.5M), about a
tenth of that row's compiled training step.

Attention: batched matmuls instead of the CPU flash-attention kernels.
At the shapes tinyforge trains on a CPU (head dim 32-64, sequences of 256) the flash backward runs at a
few percent of the bf16 matmul peak: 13 ms of a 15 ms attention forward + backward (hidden 128, 4/2
heads, seq 256, micro-batch 8, one thread). Recomputing the probabilities from the forward's
log-sum-exp and doing the backward as matmuls (bf16 operands, fp32 softmax algebra) is 1.8x faster
once torch.compile fuses its element-wise part (figures in docs/train-speed.md). Since session 6 the
forward is matmuls too (S = q k^T, softmax, P V): a compiled small-row step 6% faster on average than
with the flash forward kernel (six alternated pairs, 1-9%), the bench row unchanged. Relative error
against an fp32 reference, bf16 inputs (three seeds): output 0.40% vs the flash kernels' 0.31%; dq, dk,
dv 0.57, 0.59, 0.44% vs 0.45, 0.55, 0.49%, and below the 0.61, 0.62, 0.48% of the flash forward with
this backward (its probabilities now come from the same bf16 scores as the forward's). Eager, the
element-wise ops run one by one and it is slower than the flash kernels, so it is used only inside a compiled graph
(training, and the forward alone in a compiled scoring pass: a 64 x 256 pass on an AMD EPYC with
AVX512-BF16, where the flash forward was half of it, took 114-122 ms against 130-131 with it, and
102-108 ms against 123-131 once in four causal query blocks, alternated pairs); everywhere else this
is the reference attention (engine/ops.py).
"""
from __future__ import annotations

import torch

from engine import ops
from engine.ops import fused_adamw


class MatmulAttention(torch.autograd.Function):
    """Causal attention, q [B, Hq, T, D], k/v [B, Hkv, T, D] with Hq % Hkv == 0 (query head h uses kv
    head h // (Hq / Hkv), as enable_gqa), as batched matmuls both ways. Forward: S = q k^T * scale masked,
    m = rowmax(S), P = exp(S - m) (bf16), l = rowsum(P), O = P V / l, lse = m + log(l); backward: P / l as
    kept by the forward when small (KEPT_PROBS_BYTES), else exp(q k^T * scale - lse) recomputed from lse as a
    flash kernel does; dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ = dS K scale,
    dK = dS^T Q scale; both ways in two causal query blocks (_training_blocks)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse, probs, row_sums = _forward(q, k, v, _training_blocks(q.shape[2]))
        kept = sum(p.numel() for p in probs) * probs[0].element_size() <= KEPT_PROBS_BYTES
        ctx.save_for_backward(q, k, v, out, lse, *((*probs, *row_sums) if kept else ()))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, *kept = ctx.saved_tensors
        return _backward(q, k, v, out, lse, grad_out, _training_blocks(q.shape[2]), kept[:len(kept) // 2],
                         kept[len(kept) // 2:])


# The forward's probabilities are kept for the backward up to this size per attention call (3 MiB at the
# small row's micro-batch, 8 x 4 heads x 256): the backward then skips its q k^T products and exponentials,
# 3.5 vs 4.2 ms per call on a Zen 4 (session 7). Above it (long sequences: the probabilities grow as T^2)
# they are recomputed from the log-sum-exp, as a flash kernel does.
KEPT_PROBS_BYTES = 16 << 20


def _training_blocks(T: int) -> tuple[int, ...]:
    """Two causal query blocks (the first half of the queries sees only the first half of the keys, so a
    quarter of the masked scores is never computed) for both directions. Backward: 3.9-4.0 vs 4.2-4.5 ms per
    attention call at seq 256 (four or eight blocks slower: thinner matmuls). Forward: no gain on a Zen 5
    (session 6); on a Zen 4, where the forward's softmax kernel took 15.6 ms of a small-row step (8.6 on the
    Zen 5), the step 6% faster and the bench row's 7-8% (session 7, docs/train-speed.md)."""
    return (0, T // 2, T) if T >= 128 and T % 2 == 0 else (0, T)


def _block_scores(q5, k, t0, t1):
    """Query rows [t0, t1) of each kv head's query heads, side by side (q5 [B, Hkv, group, T, D]), against
    keys [0, t1): the block's queries [B, Hkv, rows, D], its unscaled scores from one bf16 matmul, in fp32
    [B, Hkv, group, t1 - t0, t1], and the causal mask (True above the diagonal). The forward and the
    backward both take their scores from here, so the backward differentiates what the forward computed."""
    B, Hkv, group, _, D = q5.shape
    q_blk = q5[:, :, :, t0:t1].reshape(B, Hkv, group * (t1 - t0), D)
    scores = torch.matmul(q_blk, k[:, :, :t1].transpose(-1, -2)).float().view(B, Hkv, group, t1 - t0, t1)
    # int32 positions: the fused kernels compare them in vectors half as wide as int64's
    pos = torch.arange(t1, device=q5.device, dtype=torch.int32)
    causal = pos[None, :] > pos[t0:t1, None]
    return q_blk, scores, causal


def _forward(q, k, v, bounds):
    """Output and log-sum-exp of causal attention, query block [t0, t1) against keys [0, t1) for each pair
    of bounds; and each block's unnormalised probabilities [B, Hkv, group, t1 - t0, t1] (bf16) with their row
    sums."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    q5 = q.reshape(B, Hkv, group, T, D)
    outs, lses, probs_blocks, row_sums = [], [], [], []
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        rows = group * (t1 - t0)
        _, scores, causal = _block_scores(q5, k, t0, t1)
        scores = (scores * D ** -0.5).masked_fill(causal, float("-inf"))
        # one exponential per score: the unnormalised probabilities written in bf16 with their row sum taken
        # in the same fused loop, and the output divided by it after P V (logsumexp then exp(S - lse) took
        # two: 0.76 vs 1.17 ms per training call, 5.2 vs 7.2 per scoring call, on a Zen 4)
        row_max = scores.amax(-1, keepdim=True)
        probs = torch.exp(scores - row_max).to(q.dtype)
        row_sum = probs.float().sum(-1, keepdim=True)
        out = torch.matmul(probs.view(B, Hkv, rows, t1), v[:, :, :t1]).view(B, Hkv, group, t1 - t0, D)
        outs.append((out.float() / row_sum).to(q.dtype))
        lses.append((row_max + torch.log(row_sum)).squeeze(-1))
        probs_blocks.append(probs)
        row_sums.append(row_sum)
    return (torch.cat(outs, dim=3).view(B, Hq, T, D), torch.cat(lses, dim=3).view(B, Hq, T), probs_blocks,
            row_sums)


def _backward(q, k, v, out, lse, grad_out, bounds, kept_probs=(), kept_row_sums=()):
    """Gradients of causal attention, query block [t0, t1) against keys [0, t1) for each pair of bounds; the
    probabilities from the forward's kept blocks where given, else recomputed from lse."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = D ** -0.5
    # the query heads of one kv head side by side, so each matmul with k or v is one batched matmul and
    # dK/dV sum over the group by themselves
    q5, out5, grad5 = (t.reshape(B, Hkv, group, T, D) for t in (q, out, grad_out))
    lse4 = lse.reshape(B, Hkv, group, T)
    grad_k = torch.zeros(B, Hkv, T, D, dtype=torch.float32, device=q.device)
    grad_v = torch.zeros_like(grad_k)
    grad_q = []
    for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = group * (t1 - t0)
        if kept_probs:
            q_blk = q5[:, :, :, t0:t1].reshape(B, Hkv, rows, D)
            probs = kept_probs[i].float() / kept_row_sums[i]
        else:
            q_blk, scores, causal = _block_scores(q5, k, t0, t1)
            probs = torch.exp(scores * scale - lse4[:, :, :, t0:t1, None]).masked_fill(causal, 0.0)
        grad_blk = grad5[:, :, :, t0:t1].to(q.dtype).reshape(B, Hkv, rows, D)
        k_blk, v_blk = k[:, :, :t1], v[:, :, :t1]
        grad_v[:, :, :t1] += torch.matmul(probs.to(q.dtype).view(B, Hkv, rows, t1).transpose(-1, -2), grad_blk)
        grad_probs = torch.matmul(grad_blk, v_blk.transpose(-1, -2)).float().view(B, Hkv, group, t1 - t0, t1)
        delta = (grad5[:, :, :, t0:t1].float() * out5[:, :, :, t0:t1].float()).sum(-1, keepdim=True)
        grad_scores = (probs * (grad_probs - delta)).to(q.dtype).view(B, Hkv, rows, t1)
        grad_q.append((torch.matmul(grad_scores, k_blk) * scale).view(B, Hkv, group, t1 - t0, D))
        grad_k[:, :, :t1] += torch.matmul(grad_scores.transpose(-1, -2), q_blk) * scale
    return (torch.cat(grad_q, dim=3).view(B, Hq, T, D).to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling() and q.device.type == "cpu":
        if torch.is_grad_enabled():
            return MatmulAttention.apply(q, k, v)
        # four query blocks skip 3/8 of the masked scores: a compiled 64 x 256 scoring pass 99.6-102.3 ms
        # vs 118.2-120.6 in one block (two: 102.2-108.7, eight as four; eight slower again on a Zen 4)
        T = q.shape[2]
        return _forward(q, k, v, tuple(T * i // 4 for i in range(5)) if T >= 128 else (0, T))[0]
    return ops.attention(q, k, v)


OPERATORS = {"attention": attention, "adamw": fused_adamw}
