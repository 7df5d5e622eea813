"""Fused operators against eager torch (and Liger-Kernel on a GPU), on the current device, in one run.

For each operator: forward+backward time and peak memory of the reference (engine/ops.py) and of the
device's fused implementation, printed as ratios (speed-up = eager time / fused time; memory =
fused peak / eager peak). On a GPU also Liger's time and ours relative to it; on a GPU or NPU one
whole training step of the pangu-pi-1b-pro preset (tokens/s, MFU against the vendor's bf16 peak,
engine/peaks.py) with the fused table and with the reference table.
On CPU only what runs natively is timed: the reference, the plain-torch chunked cross-entropy and
torch's fused AdamW (Triton's interpreter is a correctness tool, not something to time).

Targets on a GPU: each fused op >= 1.5x eager and >= 1.0x Liger; fused cross-entropy <= 0.25 of
eager's peak memory; the 1B preset >= 45% MFU in bf16.
Usage: python bench/kernels.py [--backend auto] [--repeats 5] [--steps 5] [--micro-batch 4] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch

from engine.arch import flops_per_token
from engine.backend import Backend, detect, resolve
from engine.config import model_config
from engine.ops import OP_NAMES, build_table, fused_adamw, load_operator
from engine.peak_memory import peak_memory_bytes
from engine.peaks import device_peak
from synthetic_step import synthetic_step  # bench/, beside this script

FUSED_IMPL = {"cuda": {op: "triton" for op in OP_NAMES}, "npu": {op: "npu" for op in OP_NAMES},
              "cpu": {"linear_cross_entropy": "chunked", "adamw": "fused_adamw"}}
PRESET = "pangu-pi-1b-pro"


@dataclass
class Shapes:
    batch: int
    seq: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    ce_tokens: int


def shapes_for(device: torch.device) -> Shapes:
    cfg = model_config(PRESET)
    if device.type == "cpu":  # the same operators at sizes two CPU cores finish in seconds
        return Shapes(batch=2, seq=256, hidden=256, heads=4, kv_heads=4, ffn=704, vocab=cfg.vocab_size,
                      ce_tokens=1024)
    return Shapes(batch=4, seq=cfg.block_size, hidden=cfg.n_embd, heads=cfg.n_head, kv_heads=cfg.n_kv_head,
                  ffn=cfg.ffn_hidden, vocab=cfg.vocab_size, ce_tokens=4 * cfg.block_size)


def sync(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def operator_cases(s: Shapes, device: torch.device, act_dtype: torch.dtype) -> dict[str, Callable]:
    """op -> make(fn) -> a zero-argument fwd+bwd closure with fresh inputs."""
    D = s.hidden // s.heads

    def leaf(*shape, dtype=act_dtype):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    def fwd_bwd(fn, inputs_fn):
        def run():
            inputs = inputs_fn()
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
        return run

    T = s.seq
    inv = 1.0 / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)
    emb = torch.outer(torch.arange(T, device=device).float(), inv).repeat(1, 2)
    cos, sin = emb.cos(), emb.sin()
    targets = torch.randint(0, s.vocab, (s.ce_tokens,), device=device)
    weight_c = torch.ones(s.hidden, device=device)
    return {
        "rms_norm": lambda fn: fwd_bwd(lambda x, w: fn(x, w, 1e-5),
                                       lambda: [leaf(s.batch, T, s.hidden), weight_c.clone().requires_grad_()]),
        "rotary": lambda fn: fwd_bwd(lambda x: fn(x.transpose(1, 2), cos, sin),
                                     lambda: [leaf(s.batch, T, s.heads, D)]),
        "swiglu": lambda fn: fwd_bwd(fn, lambda: [leaf(s.batch, T, 2 * s.ffn)]),
        "attention": lambda fn: fwd_bwd(fn, lambda: [leaf(s.batch, s.heads, T, D), leaf(s.batch, s.kv_heads, T, D),
                                                     leaf(s.batch, s.kv_heads, T, D)]),
        # fp32 hidden states and head weight under autocast, as in training
        "linear_cross_entropy": lambda fn: fwd_bwd(lambda h, w: fn(h, w, targets),
                                                   lambda: [leaf(s.ce_tokens, s.hidden, dtype=torch.float32),
                                                            leaf(s.vocab, s.hidden, dtype=torch.float32)]),
    }


def adamw_case(s: Shapes, device: torch.device) -> Callable:
    """One optimizer step over two blocks' worth of parameters (with grads)."""
    shapes = [(s.hidden, s.hidden)] * 4 + [(2 * s.ffn, s.hidden), (s.hidden, s.ffn), (s.hidden,), (s.hidden,)]
    params = [torch.nn.Parameter(torch.randn(*shape, device=device)) for shape in shapes * 2]
    for p in params:
        p.grad = torch.randn_like(p)

    def make(factory):
        opt = factory([{"params": params, "weight_decay": 0.1}], lr=1e-4)
        opt.step()  # state allocation outside the measurement
        return opt.step
    return make


def measure(runs: dict[str, Callable], device: torch.device, repeats: int) -> dict[str, tuple[float, int]]:
    """name -> (best seconds, peak bytes). The runs are interleaved, so load from anything else on the
    machine hits them alike, and the best of `repeats` is kept."""
    times = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: (min(times[name]), peak_memory_bytes(run, device)) for name, run in runs.items()}


def resolve_impl(impl: str, op: str) -> Callable:
    return fused_adamw if impl == "fused_adamw" else load_operator(impl, op)


def bench_operators(backend: Backend, repeats: int) -> list[dict]:
    device = backend.device
    act_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    s = shapes_for(device)
    cases = operator_cases(s, device, act_dtype)
    fused = FUSED_IMPL[device.type]
    liger = {}
    if device.type == "cuda":
        from cuda_fallback import liger as liger_ops
        try:
            liger_ops._functional()
            liger = liger_ops.OPERATORS
        except RuntimeError as exc:  # not installed: say so, keep going
            print(f"liger: not compared ({exc})")
    rows = []
    for op in OP_NAMES:
        with backend.autocast():
            if op == "adamw":
                make = adamw_case(s, device)
                runs = {"eager": make(load_operator("torch", "adamw"))}
                if op in fused:
                    runs["fused"] = make(resolve_impl(fused[op], op))
            else:
                runs = {"eager": cases[op](load_operator("torch", op))}
                if op in fused:
                    runs["fused"] = cases[op](resolve_impl(fused[op], op))
                if op in liger:
                    runs["liger"] = cases[op](liger[op])
            row = {"op": op, "impl": fused.get(op, "-"), **measure(runs, device, repeats)}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = (f"{'operator':<21}{'fused impl':<12}{'eager ms':>10}{'fused ms':>10}{'speed-up':>10}"
          f"{'eager MiB':>11}{'fused MiB':>11}{'mem ratio':>11}{'liger ms':>10}{'vs liger':>10}")


def format_row(row: dict) -> str:
    e_t, e_m = row["eager"]
    cells = [f"{row['op']:<21}{row['impl']:<12}{e_t * 1e3:>10.2f}"]
    if "fused" in row:
        f_t, f_m = row["fused"]
        cells.append(f"{f_t * 1e3:>10.2f}{e_t / f_t:>9.2f}x{e_m / 2**20:>11.1f}{f_m / 2**20:>11.1f}"
                     f"{f_m / max(e_m, 1):>11.3f}")
    else:
        cells.append(f"{'n/a':>10}{'':>10}{e_m / 2**20:>11.1f}{'n/a':>11}{'':>11}")
    if "liger" in row and "fused" in row:
        cells.append(f"{row['liger'][0] * 1e3:>10.2f}{row['liger'][0] / row['fused'][0]:>9.2f}x")
    return "".join(cells)


def bench_whole_step(backend: Backend, steps: int, micro_batch: int) -> dict:
    cfg = model_config(PRESET)
    seq = cfg.block_size
    peak, source = device_peak(backend.device, torch.bfloat16)
    results = {}
    for name, table in (("fused", backend.ops),
                        ("reference", build_table(backend.name, {op: "torch" for op in OP_NAMES}))):
        model, step = synthetic_step(cfg, table, backend, micro_batch, seq)
        for _ in range(2):
            step()
        sync(backend.device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync(backend.device)
        tps = steps * micro_batch * seq / (time.perf_counter() - t)
        results[name] = {"tokens_per_s": tps, "mfu": tps * flops_per_token(cfg, seq) / peak}
        print(f"whole step {PRESET} ({name} table, micro-batch {micro_batch} x {seq}, bf16): {tps:,.0f} tokens/s, "
              f"MFU {results[name]['mfu']:.1%} ({source})")
        del model, step
    speedup = results["fused"]["tokens_per_s"] / results["reference"]["tokens_per_s"]
    print(f"whole step speed-up, fused / reference table: {speedup:.2f}x")
    return {**results, "micro_batch": micro_batch, "seq": seq, "peak_flops": peak, "peak_source": source}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="whole-step benchmark steps (GPU/NPU; 0: skip it)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--json", help="also write the rows (seconds, peak bytes) and the whole step as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    requested = detect() if args.backend == "auto" else args.backend
    backend = resolve(requested, "fp32" if requested == "cpu" else "bf16")
    device = backend.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, backend ops {backend.ops.chosen}")
    if device.type == "cpu":
        print(f"cpu: {torch.get_num_threads()} threads, fp32. Triton kernels need a GPU (the interpreter only checks "
              "correctness), so only the reference, the plain-torch chunked cross-entropy and torch's fused "
              "AdamW are timed here; the rest show eager only.")
    s = shapes_for(device)
    print(f"shapes: batch {s.batch} x seq {s.seq}, hidden {s.hidden}, heads {s.heads}/{s.kv_heads}, ffn {s.ffn}, "
          f"cross-entropy {s.ce_tokens} tokens x vocab {s.vocab}")
    print(HEADER)
    rows = bench_operators(backend, args.repeats)
    step = None
    if device.type in ("cuda", "npu") and args.steps > 0:
        step = bench_whole_step(backend, args.steps, args.micro_batch)
    else:
        print(f"whole step {PRESET}: skipped (needs a GPU or NPU)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "operators": rows, "whole_step": step}, f, indent=1)


if __name__ == "__main__":
    main()
