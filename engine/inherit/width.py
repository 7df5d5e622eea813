"""Importance of every query head, FFN neuron and hidden channel (higher = keep), per kept layer.

random; l1 / l2 (norms of the weights a structure owns, streamed from the parent tensor by tensor);
taylor (|weight x gradient| on calibration data, summed over a structure's weights); activation
(Minitron: a head on the input of o_proj, a neuron on the input of down_proj, a channel on the
outputs of every norm summed over layers; mean of |a| over the sequence, L2 over the batch)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from engine.config import ModelConfig


@dataclass
class WidthScores:
    heads: torch.Tensor  # [L, n_head]
    neurons: torch.Tensor  # [L, ffn_hidden]
    channels: torch.Tensor  # [n_embd]

    @classmethod
    def zeros(cls, cfg: ModelConfig, n_layers: int) -> "WidthScores":
        return cls(torch.zeros(n_layers, cfg.n_head, dtype=torch.float64),
                   torch.zeros(n_layers, cfg.ffn_hidden, dtype=torch.float64),
                   torch.zeros(cfg.n_embd, dtype=torch.float64))

    def add(self, cfg: ModelConfig, name: str, j: int | None, imp: torch.Tensor) -> None:
        """Credit an element-wise importance tensor of parameter `name` (child layer j) to the
        structures that own its entries. k/v rows are shared by a group: split over its query heads."""
        imp = imp.double().cpu()
        H, D, F, g = cfg.n_head, cfg.head_dim, cfg.ffn_hidden, cfg.n_head // cfg.n_kv_head
        kind = name.rsplit(".", 2)[-2] if "." in name else name
        if name in ("embed.weight", "lm_head.weight"):
            self.channels += imp.sum(0)
        elif kind in ("norm", "attn_norm", "mlp_norm"):
            self.channels += imp
        elif kind == "q_proj":
            self.heads[j] += imp.view(H, D, -1).sum((1, 2))
            self.channels += imp.sum(0)
        elif kind in ("k_proj", "v_proj"):
            self.heads[j] += (imp.view(cfg.n_kv_head, D, -1).sum((1, 2)) / g).repeat_interleave(g)
            self.channels += imp.sum(0)
        elif kind == "o_proj":
            self.heads[j] += imp.view(-1, H, D).sum((0, 2))
            self.channels += imp.sum(1)
        elif kind == "gate_up_proj":
            self.neurons[j] += imp[:F].sum(1) + imp[F:].sum(1)
            self.channels += imp.sum(0)
        elif kind == "down_proj":
            self.neurons[j] += imp.sum(0)
            self.channels += imp.sum(1)
        else:
            raise KeyError(f"no structure owns parameter {name}")

    def map(self, fn) -> "WidthScores":
        return WidthScores(fn(self.heads), fn(self.neurons), fn(self.channels))


def layer_of(name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def random_scores(cfg: ModelConfig, n_layers: int, seed: int) -> WidthScores:
    g = torch.Generator().manual_seed(seed)
    z = WidthScores.zeros(cfg, n_layers)
    return z.map(lambda t: torch.rand(t.shape, generator=g, dtype=torch.float64))


def weight_norm_scores(source, layers: list[int], p: int, log=print) -> WidthScores:
    """L1 (p=1) or L2 (p=2) norm of each structure's weights; reads the parent tensor by tensor."""
    from engine.inherit.source import engine_names

    cfg = source.config
    local = {i: j for j, i in enumerate(layers)}
    scores = WidthScores.zeros(cfg, len(layers))
    names = engine_names(cfg, layers)
    if cfg.tie_embeddings:
        names.remove("lm_head.weight")  # the same tensor as the embedding: count it once
    for name in names:
        w = source.get(name)
        scores.add(cfg, name, local.get(layer_of(name)), w.abs() if p == 1 else w.square())
    return scores if p == 1 else scores.map(torch.sqrt)


def taylor_scores(model, batches, device, log=print) -> WidthScores:
    """First-order Taylor: |w * dL/dw| per weight, gradient of the mean LM loss over the calibration
    batches, summed per structure. `model` is the depth-cut parent (full width), in memory."""
    cfg = model.config
    model.zero_grad(set_to_none=True)
    model.train()
    for x, y in batches:
        (model(x.to(device), y.to(device)) / len(batches)).backward()
    scores = WidthScores.zeros(cfg, cfg.n_layer)
    for name, p in model.named_parameters():  # a tied embedding appears once, with both gradients
        scores.add(cfg, name, layer_of(name), (p.detach() * p.grad).abs())
    model.zero_grad(set_to_none=True)
    return scores


@torch.no_grad()
def activation_scores(stream, layers: list[int], batches, log=print) -> WidthScores:
    """Minitron's activation importance, streaming the depth-cut parent block by block."""
    cfg = stream.cfg
    H, D = cfg.n_head, cfg.head_dim
    heads = torch.zeros(len(layers), H, dtype=torch.float64)
    neurons = torch.zeros(len(layers), cfg.ffn_hidden, dtype=torch.float64)
    channels = torch.zeros(cfg.n_embd, dtype=torch.float64)

    def per_sample(a: torch.Tensor) -> torch.Tensor:  # [B, T, N] -> sum over batch of (mean_T |a|)^2
        return a.abs().mean(1).double().square().sum(0).cpu()

    inputs = [x for x, _ in batches]
    hidden = stream.embed(inputs)
    cos, sin = stream.rope(inputs[0].shape[1])
    for j, i in enumerate(layers):
        block = stream.block(i)
        sq = {"attn_norm": 0, "mlp_norm": 0}
        for norm in sq:
            getattr(block, norm).register_forward_hook(
                lambda m, a, out, norm=norm: sq.__setitem__(norm, sq[norm] + per_sample(out)))

        def head_hook(m, a, j=j):  # returns None: a pre-hook's return value would replace the input
            heads[j] += per_sample(a[0].unflatten(-1, (H, D)).norm(dim=-1))

        def neuron_hook(m, a, j=j):
            neurons[j] += per_sample(a[0])

        block.attn.o_proj.register_forward_pre_hook(head_hook)
        block.mlp.down_proj.register_forward_pre_hook(neuron_hook)
        hidden = [block(h, cos, sin) for h in hidden]
        channels += sq["attn_norm"].sqrt() + sq["mlp_norm"].sqrt()
        del block
    final = {"sq": 0}
    stream.losses(hidden, [y for _, y in batches], final_norm_hook=lambda n: final.__setitem__(
        "sq", final["sq"] + per_sample(n)))
    channels += final["sq"].sqrt()
    return WidthScores(heads.sqrt(), neurons.sqrt(), channels)
