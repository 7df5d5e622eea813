"""Run a parent forward one block at a time, loading each block's tensors from the source just before
it is used: data-driven scores (activations, block influence, loss rise) never hold the whole parent,
only one block plus the calibration batches' hidden states."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model import Block, rope_tables
from engine.ops import REFERENCE, OpTable


class StreamedParent:
    def __init__(self, source, device="cpu", ops: OpTable = REFERENCE):
        self.source, self.cfg, self.device, self.ops = source, source.config, torch.device(device), ops

    def _t(self, name: str) -> torch.Tensor:
        return self.source.get(name).to(self.device)

    @torch.no_grad()
    def embed(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        weight = self._t("embed.weight")
        return [F.embedding(x.to(self.device), weight) for x in inputs]

    def block(self, i: int) -> Block:
        block = Block(self.cfg, self.ops)
        state = {k: self._t(f"blocks.{i}.{k}") for k in block.state_dict()}
        block.load_state_dict(state)
        return block.to(self.device).eval().requires_grad_(False)

    def rope(self, T: int):
        return rope_tables(self.cfg, T, self.device)

    @torch.no_grad()
    def losses(self, hidden: list[torch.Tensor], targets: list[torch.Tensor], final_norm_hook=None) -> list[float]:
        """Mean next-token loss of each batch from its last hidden state (final norm + output head)."""
        norm_w, head = self._t("norm.weight"), self._t("lm_head.weight")
        out = []
        for h, y in zip(hidden, targets):
            n = self.ops.rms_norm(h, norm_w, self.cfg.norm_eps)
            if final_norm_hook:
                final_norm_hook(n)
            out.append(self.ops.linear_cross_entropy(n.flatten(0, 1), head, y.to(self.device).flatten()).item())
        return out
