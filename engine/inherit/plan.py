"""What the child keeps, as parent indices: layers, query heads and key/value groups per layer, FFN
neurons per layer, one hidden-channel set for the whole residual stream, vocabulary rows."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from engine.config import ModelConfig


@dataclass
class Plan:
    layers: list[int]  # parent layer ids, child order
    heads: list[list[int]]  # per child layer: parent query heads, grouped by kept key/value group
    groups: list[list[int]]  # per child layer: parent key/value heads
    neurons: list[list[int]]  # per child layer: parent FFN neurons
    channels: list[int]  # parent hidden channels (embedding, norms, every projection, output head)
    vocab: list[int] | None = None  # parent token ids in child-id order; None = all, same order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def full_width(cls, cfg: ModelConfig, layers: list[int]) -> "Plan":
        return cls(list(layers), [list(range(cfg.n_head)) for _ in layers],
                   [list(range(cfg.n_kv_head)) for _ in layers], [list(range(cfg.ffn_hidden)) for _ in layers],
                   list(range(cfg.n_embd)))


def top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in increasing index order (ties: the lower index)."""
    order = torch.argsort(scores.double(), descending=True, stable=True)[:k]
    return sorted(order.tolist())


def select_heads(scores: torch.Tensor, parent: ModelConfig, child: ModelConfig) -> tuple[list[int], list[int]]:
    """Grouped-query-aware: every kept key/value group keeps the same number of query heads (the child's
    heads per group, best first inside the group); groups are ranked by the scores of the heads they
    would keep and the best child.n_kv_head survive. Same group count: Minitron's keep-all-groups;
    same heads per group: whole groups dropped; both shrinking: both at once."""
    g_parent, g_child = parent.n_head // parent.n_kv_head, child.n_head // child.n_kv_head
    per_group = scores.view(parent.n_kv_head, g_parent)
    within = [top(per_group[k], g_child) for k in range(parent.n_kv_head)]
    group_scores = torch.stack([per_group[k, within[k]].sum() for k in range(parent.n_kv_head)])
    groups = top(group_scores, child.n_kv_head)
    return [k * g_parent + h for k in groups for h in within[k]], groups


def make_plan(layers: list[int], head_scores, neuron_scores, channel_scores, parent: ModelConfig,
              child: ModelConfig, vocab: list[int] | None) -> Plan:
    """Scores are per child layer ([L_child, H], [L_child, F]) and per channel ([C])."""
    heads, groups = zip(*(select_heads(head_scores[j], parent, child) for j in range(len(layers))))
    neurons = [top(neuron_scores[j], child.ffn_hidden) for j in range(len(layers))]
    return Plan(list(layers), list(heads), list(groups), neurons, top(channel_scores, child.n_embd), vocab)
