"""CPU operators for compiled training (the CPU table's `attention: cpu`).

Attention whose backward is four batched matmuls instead of the CPU flash-attention backward kernel.
At the shapes tinyforge trains on a CPU (head dim 32-64, sequences of 256) the flash backward runs at a
few percent of the bf16 matmul peak: 13 ms of a 15 ms attention forward + backward (hidden 128, 4/2
heads, seq 256, micro-batch 8, one thread). Recomputing the probabilities from the forward's
log-sum-exp and doing the backward as matmuls (bf16 operands, fp32 softmax algebra) is 1.8x faster
once torch.compile fuses its element-wise part (bench/attention_backward.py), and as accurate against
an fp32 reference as the flash kernel (relative error 0.6% vs 0.5% in bf16). Eager, those element-wise
ops run one by one and it is slower than the flash kernel, so it is used only inside a compiled graph;
everywhere else this is the reference attention (engine/ops.py).
"""
from __future__ import annotations

import torch

from engine import ops


class MatmulBackwardAttention(torch.autograd.Function):
    """Causal attention, q [B, Hq, T, D], k/v [B, Hkv, T, D] with Hq % Hkv == 0 (query head h uses kv
    head h // (Hq / Hkv), as enable_gqa). Forward: the CPU flash kernel (its log-sum-exp kept);
    backward: P = exp(q k^T * scale - lse) masked, dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)),
    dQ = dS K scale, dK = dS^T Q scale."""

    @staticmethod
    def forward(ctx, q, k, v):
        group = q.shape[1] // k.shape[1]
        k_full = k.repeat_interleave(group, 1) if group > 1 else k
        v_full = v.repeat_interleave(group, 1) if group > 1 else v
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k_full, v_full, 0.0, True)[:2]
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        B, Hq, T, D = q.shape
        Hkv = k.shape[1]
        scale = D ** -0.5
        # the query heads of one kv head side by side: [B, Hkv, group * T, D], so each matmul with k or v
        # is one batched matmul and dK/dV sum over the group by themselves
        q_grouped = q.reshape(B, Hkv, -1, D)
        grad_grouped = grad_out.to(q.dtype).reshape(B, Hkv, -1, D)
        scores = torch.matmul(q_grouped, k.transpose(-1, -2)).float().view(B, Hq, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        probs = torch.exp(scores * scale - lse.unsqueeze(-1)).masked_fill(causal, 0.0)
        grad_v = torch.matmul(probs.to(q.dtype).view(B, Hkv, -1, T).transpose(-1, -2), grad_grouped)
        grad_probs = torch.matmul(grad_grouped, v.transpose(-1, -2)).float().view(B, Hq, T, T)
        delta = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grad_scores = (probs * (grad_probs - delta)).to(q.dtype).view(B, Hkv, -1, T)
        grad_q = (torch.matmul(grad_scores, k) * scale).view(B, Hq, T, D)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q_grouped) * scale
        return grad_q, grad_k, grad_v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling() and q.device.type == "cpu" and torch.is_grad_enabled():
        return MatmulBackwardAttention.apply(q, k, v)
    return ops.attention(q, k, v)


OPERATORS = {"attention": attention}
