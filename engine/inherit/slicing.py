"""Cut the child's state dict out of the parent, one parent tensor at a time (each is read, indexed
and dropped before the next), so the peak is the child plus one parent tensor."""
from __future__ import annotations

from typing import Callable

import torch

from engine.config import ModelConfig
from engine.inherit.plan import Plan

Fold = Callable[[str, torch.Tensor], torch.Tensor]  # (parent name, tensor) -> tensor, before slicing


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Rows of q/k/v (= columns of o) belonging to whole heads; a head is never cut inside, since
    rotary pairs dimension j with j + head_dim / 2."""
    return (torch.tensor(heads, dtype=torch.long)[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _cut(t: torch.Tensor, rows=None, cols=None) -> torch.Tensor:
    if rows is not None:
        t = t.index_select(0, rows)
    if cols is not None:
        t = t.index_select(1, cols)
    return t.contiguous()


def _vocab_rows(t: torch.Tensor, vocab: list[int] | None, n_rows: int) -> torch.Tensor:
    """Rows of the kept tokens in child-id order; rows past the id map (padding) are zero."""
    if vocab is None:
        return t
    out = t.new_zeros(n_rows, t.shape[1])
    out[:len(vocab)] = t.index_select(0, torch.tensor(vocab, dtype=torch.long))
    return out


def child_state(source, plan: Plan, parent: ModelConfig, child: ModelConfig, fold: Fold | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    def get(name):
        t = source.get(name)
        return fold(name, t) if fold else t

    ch = torch.tensor(plan.channels, dtype=torch.long)
    F_ = parent.ffn_hidden
    state = {"embed.weight": _cut(_vocab_rows(get("embed.weight"), plan.vocab, child.vocab_size), cols=ch)}
    for j, i in enumerate(plan.layers):
        src, dst = f"blocks.{i}.", f"blocks.{j}."
        q = head_rows(plan.heads[j], parent.head_dim)
        kv = head_rows(plan.groups[j], parent.head_dim)
        n = torch.tensor(plan.neurons[j], dtype=torch.long)
        state[dst + "attn_norm.weight"] = _cut(get(src + "attn_norm.weight"), rows=ch)
        state[dst + "attn.q_proj.weight"] = _cut(get(src + "attn.q_proj.weight"), q, ch)
        state[dst + "attn.k_proj.weight"] = _cut(get(src + "attn.k_proj.weight"), kv, ch)
        state[dst + "attn.v_proj.weight"] = _cut(get(src + "attn.v_proj.weight"), kv, ch)
        state[dst + "attn.o_proj.weight"] = _cut(get(src + "attn.o_proj.weight"), ch, q)  # same heads as q
        state[dst + "mlp_norm.weight"] = _cut(get(src + "mlp_norm.weight"), rows=ch)
        state[dst + "mlp.gate_up_proj.weight"] = _cut(get(src + "mlp.gate_up_proj.weight"), torch.cat([n, n + F_]), ch)
        state[dst + "mlp.down_proj.weight"] = _cut(get(src + "mlp.down_proj.weight"), ch, n)
        if progress:
            progress(j + 1, len(plan.layers))
    state["norm.weight"] = _cut(get("norm.weight"), rows=ch)
    if child.tie_embeddings:  # sliced once, re-tied
        state["lm_head.weight"] = state["embed.weight"]
    else:
        state["lm_head.weight"] = _cut(_vocab_rows(get("lm_head.weight"), plan.vocab, child.vocab_size), cols=ch)
    return state


def load_child(state: dict[str, torch.Tensor], cfg: ModelConfig, ops=None):
    from engine.model import GPT
    from engine.ops import REFERENCE

    model = GPT(cfg, ops or REFERENCE)
    model.load_state_dict(state)
    return model
