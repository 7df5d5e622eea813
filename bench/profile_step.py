"""Profile (top ops by self CPU time) of one engine training step at the demo/ablation scale: the
calls `engine.train.train`'s loop makes (Parallel.forward_backward per micro-batch, then Parallel.step:
clip + AdamW + zero_grad) on the model, optimizer and operator table a TrainSpec resolves to.

    .venv/bin/python bench/profile_step.py [--set precision=fp32] [--set compile=true] [--threads 1] [--replay]"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.backend import resolve  # noqa: E402
from engine.config import model_config  # noqa: E402
from engine.distributed import World  # noqa: E402
from engine.model import GPT  # noqa: E402
from engine.parallel import Parallel  # noqa: E402
from engine.spec import TrainSpec  # noqa: E402
from engine.train import param_groups  # noqa: E402

SMALL = dict(preset="tiny", overrides=dict(vocab_size=2048, block_size=256, tie_embeddings=True))


def build_step(fields: dict):
    """The step `engine.train.train`'s loop makes, on the model, optimizer and operator table the TrainSpec
    `fields` resolve to (random tokens): (step function, tokens a step, the spec, the backend)."""
    spec = TrainSpec.model_validate(fields)
    backend = resolve(spec.backend, spec.precision, spec.ops)
    cfg = model_config(spec.model.preset, **spec.model.overrides)
    torch.manual_seed(0)
    model = GPT(cfg, backend.ops)
    opt = backend.ops.adamw(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    par = Parallel(model, opt, spec, World(), backend)
    if spec.compile is True:  # as train() applies it: the training forward, from outside the model
        from engine import compiling
        par.wrapped = compiling.compile_training(par.wrapped, backend.device.type)
    x = torch.randint(0, cfg.vocab_size, (spec.batch_size, spec.seq_len))
    y = torch.roll(x, -1, 1)

    def step():
        for m in range(par.accum):
            sl = slice(m * spec.micro_batch, (m + 1) * spec.micro_batch)
            par.forward_backward(x[sl], y[sl], m, backend.autocast())
        return par.step()

    return step, spec.batch_size * spec.seq_len, spec, backend


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def matmul_time(step, steps: int = 3) -> tuple[float, float]:
    """(seconds a step, seconds of it in matrix multiplications) over `steps` profiled steps, after three
    unprofiled ones (the compile, when compiled)."""
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t) / steps
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e6 / steps
    return wall, mm


def replay_products(step, rounds: int = 5) -> tuple[float, float, int]:
    """(seconds of one profiled step in matrix products, seconds the same products take replayed alone, number
    of products): each aten mm/bmm of the step again in its order, with its shapes, strides and dtype, the
    best of `rounds` passes. Equal figures say the products run as fast in the step as they can at those
    shapes on this machine, so the matmul ceiling is the machine's, not a cost of the step around them."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = [e for e in prof.events() if e.name in ("aten::mm", "aten::bmm")]
    dtypes = {"c10::BFloat16": torch.bfloat16, "float": torch.float32, "c10::Half": torch.float16}

    def operand(shape, stride, dtype):
        storage = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        return torch.randn(storage).to(dtypes[dtype]).as_strided(shape, stride)

    calls = [(torch.bmm if e.name == "aten::bmm" else torch.mm,
              *(operand(e.structured_input_shapes[i], e.structured_input_strides[i], e.input_dtypes[i])
                for i in (0, 1))) for e in events]
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for fn, a, b in calls:
            fn(a, b)
        best = min(best, time.perf_counter() - t)
    return sum(e.self_cpu_time_total for e in events) / 1e6, best, len(calls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], help="TrainSpec field=value (YAML-typed)")
    ap.add_argument("--threads", type=int, default=1, help="1: comparable on a loaded machine")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--replay", action="store_true", help="also replay the step's matrix products alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fields = dict(model={"preset": SMALL["preset"], "overrides": SMALL["overrides"]}, batch_size=16, micro_batch=8,
                  seq_len=256, backend="cpu")
    fields.update({"compile": False, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}})
    step, tokens, spec, backend = build_step(fields)
    cfg = model_config(spec.model.preset, **spec.model.overrides)
    for _ in range(3):
        step()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    tied = " tied" if cfg.tie_embeddings else ""
    print(f"config: hidden {cfg.n_embd}, layers {cfg.n_layer}, vocab {cfg.vocab_size}{tied}, seq {spec.seq_len}, "
          f"batch {spec.batch_size} (micro {spec.micro_batch}); backend {backend.describe()}; compile {spec.compile}; "
          f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}")
    print(f"step time (best of 3, unprofiled): {min(times) * 1e3:.0f} ms = {tokens / min(times):,.0f} tokens/s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    if args.replay:
        in_step, alone, n = replay_products(step)
        print(f"matrix products: {n} in one step, {in_step * 1e3:.1f} ms there (profiled); the same products replayed "
              f"alone (shapes, strides, dtype, order): {alone * 1e3:.1f} ms; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
