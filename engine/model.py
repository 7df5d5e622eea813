"""Llama-style decoder: pre-norm RMSNorm, rotary embeddings, SwiGLU MLP, causal (grouped-query)
attention, optional tied embeddings. Hot operators come from an OpTable (engine/ops.py), so the
same module runs the torch reference, Triton or torch_npu kernels."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from engine.config import ModelConfig
from engine.ops import REFERENCE, OpTable


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: OpTable):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.ops = eps, ops

    def forward(self, x):
        return self.ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: OpTable):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim, self.ops = cfg.n_head, cfg.n_kv_head, cfg.head_dim, ops
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = self.ops.rotary(q, cos, sin), self.ops.rotary(k, cos, sin)
        y = self.ops.attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: OpTable):
        super().__init__()
        # gate and up fused as [gate, up]: the layout torch_npu.npu_swiglu expects.
        self.gate_up_proj = nn.Linear(cfg.n_embd, 2 * cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)
        self.ops = ops

    def forward(self, x):
        return self.down_proj(self.ops.swiglu(self.gate_up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: OpTable):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.n_embd, cfg.norm_eps, ops), Attention(cfg, ops)
        self.mlp_norm, self.mlp = RMSNorm(cfg.n_embd, cfg.norm_eps, ops), MLP(cfg, ops)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def rope_tables(cfg: ModelConfig, T: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin tables [T, head_dim], fp32."""
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    freqs = torch.outer(torch.arange(T, device=device).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: OpTable = REFERENCE):
        super().__init__()
        self.config, self.ops = cfg, ops
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, ops) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps, ops)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_buffers()
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)

    def init_buffers(self, device=None):
        """Build the rope tables for block_size; again after to_empty() from the meta device. Built here,
        never inside forward: a table assigned during a compiled call (or under inference mode) changed
        the buffer the graph was guarded on and forced a second compile."""
        self.rope_cos, self.rope_sin = rope_tables(self.config, self.config.block_size, device)

    def rope(self, T: int, device):
        if self.rope_cos.shape[0] < T or self.rope_cos.device != device:  # longer than block_size: this call only
            return rope_tables(self.config, T, device)
        return self.rope_cos[:T], self.rope_sin[:T]

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, C]."""
        cos, sin = self.rope(idx.shape[1], idx.device)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits [B, T, V] without targets; the mean cross-entropy with them (the fused
        projection + loss never materialises the full logits where the op table fuses it)."""
        h = self.hidden(idx)
        if targets is None:
            return self.lm_head(h)
        return self.ops.linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel() + (0 if self.config.tie_embeddings else self.lm_head.weight.numel())
        return n
