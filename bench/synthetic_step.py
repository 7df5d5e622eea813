"""One plain training step on a fixed random batch (autocast forward + loss, backward, AdamW, zero_grad):
the step bench/kernels.py and bench/device_check.py time, built once here so both time the same thing.
(bench/train_throughput.py times the real `tinyforge train` step instead.)"""
from __future__ import annotations

import torch

from engine.model import GPT
from engine.train import param_groups


def synthetic_step(cfg, table, backend, micro_batch: int, seq: int):
    """(model, step): step() runs one training step and returns its loss (a device tensor)."""
    torch.manual_seed(0)
    model = GPT(cfg, table).to(backend.device)
    opt = table.adamw(param_groups(model, 0.1), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq + 1), device=backend.device)

    def step():
        with backend.autocast():
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step
