"""Learnable width masks (Sheared-LLaMA's targeted structured pruning, width part).

Every query head, FFN neuron and hidden channel of the depth-cut parent gets a hard-concrete gate
(Louizos et al. 2018). Gates are trained on calibration data against the LM loss plus a Lagrangian
lambda1 (s - t) + lambda2 (s - t)^2 per structure, where s is the structure's expected sparsity and
the target t ramps linearly from 0 to the child's; the lambdas ascend, the gates descend. The parent's
weights stay frozen. Afterwards the top gates are kept and their deterministic values are folded into
the weights (o_proj / down_proj columns, the residual writers' rows, the embedding's columns), so the
sliced child computes exactly what the gated parent computes."""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from engine.config import ModelConfig

GAMMA, ZETA = -0.1, 1.1  # stretch interval of the hard-concrete distribution


class HardConcrete(nn.Module):
    def __init__(self, shape, init_keep: float, temperature: float):
        super().__init__()
        self.beta = temperature
        # log_alpha such that P(gate != 0) = init_keep at the start
        start = math.log(init_keep / (1 - init_keep)) + temperature * math.log(-GAMMA / ZETA)
        self.log_alpha = nn.Parameter(torch.full(shape, start) + 0.01 * torch.randn(shape))

    def sample(self) -> torch.Tensor:
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.beta)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def keep_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-GAMMA / ZETA))


class Gates(nn.Module):
    """Gates over the structures that shrink; the others (target 0) are not gated at all, so nothing
    is folded into them."""
    SHAPES = {"heads": lambda c: (c.n_layer, c.n_head), "neurons": lambda c: (c.n_layer, c.ffn_hidden),
              "channels": lambda c: (c.n_embd,)}

    def __init__(self, cfg: ModelConfig, active, init_keep: float, temperature: float):
        super().__init__()
        self.shapes = {k: f(cfg) for k, f in self.SHAPES.items()}
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)
        self.structures = nn.ModuleDict({k: HardConcrete(self.shapes[k], init_keep, temperature) for k in active})

    def _all(self, fn, fill: float) -> dict[str, torch.Tensor]:
        dev = self._device_probe.device
        return {k: fn(self.structures[k]) if k in self.structures else torch.full(shape, fill, device=dev)
                for k, shape in self.shapes.items()}

    def sample(self):
        return self._all(HardConcrete.sample, 1.0)

    def deterministic(self):
        return self._all(HardConcrete.deterministic, 1.0)

    def scores(self):
        """log-alpha per entry (0 for ungated structures, which the child keeps whole)."""
        return self._all(lambda g: g.log_alpha, 0.0)


def attach(model, values: dict) -> list:
    """Hooks multiplying the model's activations by the gate values in `values` (a dict read at each
    call, so the caller can swap in fresh samples): heads on o_proj's input, neurons on down_proj's
    input, channels on everything written into the residual stream."""
    cfg = model.config
    D = cfg.head_dim
    hooks = [model.embed.register_forward_hook(lambda m, a, out: out * values["channels"])]
    for j, block in enumerate(model.blocks):
        hooks += [
            block.attn.o_proj.register_forward_pre_hook(
                lambda m, a, j=j: (a[0] * values["heads"][j].repeat_interleave(D),)),
            block.attn.o_proj.register_forward_hook(lambda m, a, out: out * values["channels"]),
            block.mlp.down_proj.register_forward_pre_hook(lambda m, a, j=j: (a[0] * values["neurons"][j],)),
            block.mlp.down_proj.register_forward_hook(lambda m, a, out: out * values["channels"]),
        ]
    return hooks


def train_gates(model, batches, targets: dict[str, float], spec, device, log=print, progress=None) -> tuple[Gates, dict]:
    """`model`: the depth-cut parent at full width. `targets`: final sparsity per structure (share of
    heads / neurons / channels removed). Returns the gates and a training summary."""
    cfg = model.config
    model.requires_grad_(False).train()
    targets = {k: t for k, t in targets.items() if t > 0}
    gates = Gates(cfg, targets, spec.init_keep, spec.temperature).to(device)
    if not targets:  # nothing shrinks: no gates to train
        return gates, {"targets": {}, "history": [], "final": {}}
    lambdas = nn.Parameter(torch.zeros(len(targets), 2, device=device))
    opt = torch.optim.Adam(gates.parameters(), lr=spec.lr)
    lag_opt = torch.optim.Adam([lambdas], lr=spec.lagrangian_lr, maximize=True)
    values: dict[str, torch.Tensor] = {}
    hooks = attach(model, values)
    ramp = max(1, int(spec.ramp_frac * spec.steps))
    history, t0 = [], time.perf_counter()
    try:
        for step in range(spec.steps):
            x, y = batches[step % len(batches)]
            values.update(gates.sample())
            lm = model(x.to(device), y.to(device))
            lag = torch.zeros((), device=device)
            sparsity = {}
            for n, (k, target) in enumerate(targets.items()):
                s = 1 - gates.structures[k].keep_prob().mean()
                t = target * min(1.0, (step + 1) / ramp)
                lag = lag + lambdas[n, 0] * (s - t) + lambdas[n, 1] * (s - t) ** 2
                sparsity[k] = s.item()
            opt.zero_grad(set_to_none=True)
            lag_opt.zero_grad(set_to_none=True)
            (lm + lag).backward()
            opt.step()
            lag_opt.step()
            if step % 10 == 0 or step + 1 == spec.steps:
                history.append({"step": step + 1, "lm_loss": lm.item(), "lagrangian": lag.item(), **sparsity})
                if progress:
                    progress(step + 1, spec.steps)
                if step % 50 == 0 or step + 1 == spec.steps:
                    log(f"gates step {step + 1}/{spec.steps} lm {lm.item():.4f} expected sparsity "
                        + " ".join(f"{k} {v:.2f}/{targets[k]:.2f}" for k, v in sparsity.items())
                        + f" ({time.perf_counter() - t0:.0f}s)")
    finally:
        for h in hooks:
            h.remove()
    return gates, {"targets": targets, "history": history, "final": history[-1] if history else {}}


def fold_values(gates: Gates, layers: list[int], child: ModelConfig, parent: ModelConfig):
    """A slicing fold (parent name, tensor) -> tensor that bakes the deterministic gate values into
    the parent's weights. Exactly the gated computation: head and neuron gates scale o_proj / down_proj
    columns; channel gates scale the rows of o_proj / down_proj and the embedding's columns; with a
    tied parent and child the output head would see the scaled embedding too, so the final norm is divided back."""
    with torch.no_grad():
        z = {k: v.detach().cpu().double() for k, v in gates.deterministic().items()}
    local = {i: j for j, i in enumerate(layers)}
    D, zc = parent.head_dim, z["channels"]

    def fold(name: str, t: torch.Tensor) -> torch.Tensor:
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        if name == "embed.weight":
            return (t * zc).to(t.dtype)
        if name == "norm.weight" and child.tie_embeddings and parent.tie_embeddings:
            return (t * torch.where(zc > 0, 1 / zc.clamp_min(1e-30), torch.ones_like(zc))).to(t.dtype)
        if name.endswith("attn.o_proj.weight"):
            return (t * zc[:, None] * z["heads"][local[layer]].repeat_interleave(D)).to(t.dtype)
        if name.endswith("mlp.down_proj.weight"):
            return (t * zc[:, None] * z["neurons"][local[layer]]).to(t.dtype)
        return t
    return fold, z
