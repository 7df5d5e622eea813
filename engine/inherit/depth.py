"""Which parent layers the child keeps.

Positional: uniform, first, last, ends (the paper: the first and last layers matter most), explicit.
Importance (higher = keep): block influence, 1 - mean cosine(input, output) of a layer's hidden
states (ShortGPT, Minitron), and loss rise, how much the LM loss grows when the layer is skipped.
Both run the parent block by block (engine/inherit/stream.py)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.inherit.stream import StreamedParent


def positional(method: str, n_parent: int, n_child: int, first: int | None = None) -> list[int]:
    if method == "first":
        return list(range(n_child))
    if method == "last":
        return list(range(n_parent - n_child, n_parent))
    if method == "ends":
        head = math.ceil(n_child / 2) if first is None else first
        if head > n_child:
            raise ValueError(f"depth.first: {head} is more than the child's {n_child} layers")
        return list(range(head)) + list(range(n_parent - (n_child - head), n_parent))
    if method == "uniform":  # evenly spaced, always including the first and the last layer
        if n_child == 1:
            return [0]
        return sorted({round(i * (n_parent - 1) / (n_child - 1)) for i in range(n_child)})
    raise ValueError(f"depth.method: {method!r} is not positional")


def top_layers(scores: list[float], n_child: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:n_child])


@torch.no_grad()
def block_influence(stream: StreamedParent, inputs: list[torch.Tensor]) -> list[float]:
    hidden = stream.embed(inputs)
    cos, sin = stream.rope(inputs[0].shape[1])
    scores = []
    for i in range(stream.cfg.n_layer):
        block = stream.block(i)
        sims, new = [], []
        for h in hidden:
            out = block(h, cos, sin)
            sims.append(F.cosine_similarity(h, out, dim=-1).flatten())
            new.append(out)
        hidden = new
        scores.append(1.0 - torch.cat(sims).mean().item())
        del block
    return scores


@torch.no_grad()
def loss_rise(stream: StreamedParent, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[list[float], float]:
    """Loss with layer i skipped minus the full model's loss, for every i, in one pass over the blocks:
    stream i forks from the main stream at layer i's input and from then on sees every later block."""
    main = stream.embed(inputs)
    cos, sin = stream.rope(inputs[0].shape[1])
    skipped: list[list[torch.Tensor]] = []
    for i in range(stream.cfg.n_layer):
        block = stream.block(i)
        skipped = [[block(h, cos, sin) for h in hs] for hs in skipped]
        skipped.append(main)  # stream i: layer i skipped
        main = [block(h, cos, sin) for h in main]
        del block
    base = sum(stream.losses(main, targets)) / len(targets)
    return [sum(stream.losses(hs, targets)) / len(targets) - base for hs in skipped], base


def choose_layers(spec, n_parent: int, n_child: int, stream=None, batches=None, log=print) -> tuple[list[int], dict]:
    """(kept parent layer ids in order, {"method", "scores"?, ...})."""
    method = spec.method
    if n_child > n_parent:
        raise ValueError(f"child.n_layer: {n_child} is more than the parent's {n_parent} layers")
    if method == "explicit":
        layers = list(spec.layers)
        bad = [i for i in layers if i >= n_parent]
        if bad:
            raise ValueError(f"depth.layers: {bad} out of range for a parent of {n_parent} layers")
        if len(set(layers)) != len(layers):
            raise ValueError(f"depth.layers: {layers} repeats a layer")
        if len(layers) != n_child:
            raise ValueError(f"depth.layers: {len(layers)} layers listed but the child has n_layer={n_child}")
        return layers, {"method": method}
    if method in ("uniform", "first", "last", "ends"):
        return positional(method, n_parent, n_child, spec.first), {"method": method}
    inputs, targets = [b[0] for b in batches], [b[1] for b in batches]
    if method == "block_influence":
        log(f"depth: block influence of {n_parent} layers on {len(inputs)} calibration batches")
        scores = block_influence(stream, inputs)
        return top_layers(scores, n_child), {"method": method, "scores": scores}
    log(f"depth: loss rise when each of {n_parent} layers is skipped, on {len(inputs)} calibration batches")
    scores, base = loss_rise(stream, inputs, targets)
    return top_layers(scores, n_child), {"method": method, "scores": scores, "full_loss": base}
