"""One AdamW step, foreach (engine/ops.py `adamw`) against fused (engine/cpu_ops.py's, the CPU default), on the
parameters of bench/train_throughput.py's two rows; alternated in one process, five rounds of 0.5 s each.

    .venv/bin/python bench/adamw_step.py"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import model_config  # noqa: E402
from engine.model import GPT  # noqa: E402
from engine.ops import adamw, fused_adamw  # noqa: E402
from engine.train import param_groups  # noqa: E402

ROWS = {"small": ("tiny", dict(vocab_size=2048, block_size=256, tie_embeddings=True)),
        "bench": ("small", dict(vocab_size=8000, block_size=256))}


def step_ms(opt, seconds=0.5) -> float:
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        opt.step()
        n += 1
    return (time.perf_counter() - t) / n * 1e3


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for name, (preset, overrides) in ROWS.items():
        model = GPT(model_config(preset, **overrides))
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opts = {"foreach": adamw(param_groups(model, 0.1), lr=1e-3), "fused": fused_adamw(param_groups(model, 0.1), lr=1e-3)}
        times = {k: [] for k in opts}
        for _ in range(5):
            for k, opt in opts.items():
                times[k].append(step_ms(opt))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name} row ({sum(p.numel() for p in model.parameters()):,} parameters): foreach "
              f"{med['foreach']:.2f} ms, fused {med['fused']:.2f} ms a step (medians of 5); fused is "
              f"{med['foreach'] / med['fused']:.2f}x faster; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
