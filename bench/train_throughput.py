"""Training throughput: the engine against transformers' LlamaForCausalLM, same config, same machine,
same precision, same threads, same run. One command, a few minutes on 2 cores:

    .venv/bin/python bench/train_throughput.py [--rows bench,small] [--eager-only] [--precision auto] [--threads N]

The engine side is `engine.train.train` itself, the function `tinyforge train` runs (data loader,
optimizer, clipping, logging cadence; evaluation and checkpoints only at the end, outside the timing):
its tokens/s are the median of the run's logged intervals (metrics.jsonl), the first (warm-up, and the
compile) left out. It is measured twice: eager (`compile: false`, what a short run gets) and compiled
(`compile: true`, what `compile: auto` gives a run long enough to repay the compile; engine/compiling.py).
The transformers side is the usual loop (autocast forward, backward, clip, AdamW, zero_grad) on the
same batches, eager and under torch.compile. Rows:
  bench   hidden 256, 8 layers, 4 heads, vocab 8,000, seq 256, batch 8        target >= 1.6x (or >= 85% of peak)
  small   hidden 128, 4 layers, 4/2 heads, vocab 2,048, tied, seq 256, batch 16 (micro 8; the demo's
          and the ablation's scale)                                          target >= 2x
  score   the small model's forward-only scoring pass (multi-round training; engine/rounds/score.py),
          eager and compiled, against training tokens/s the same way     target >= 3.3x
The headline ratio is the engine as a long run trains (compiled) against transformers eager; the
other pairings are printed beside it, and the ceiling the matrix multiplications set on this machine:
the transformers step time over the time a profiled compiled engine step spends in aten mm/bmm (what
the ratio would be if nothing but those products were left). The sides are alternated (`--trials`
times each, best kept) so drifting load hits all alike. A ratio is printed only when the 1-minute load
average moved by at most 1 during its row; otherwise the row is measured again (`--attempts`), and
then withheld. Progress lines keep coming (never a silent minute)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.arch import flops_per_token, measured_matmul_peak  # noqa: E402
from engine.backend import bf16_native, resolve  # noqa: E402
from engine.config import model_config  # noqa: E402
from engine.cpu_load import too_busy_for_threads  # noqa: E402
from engine.data import BatchSampler, TokenData, prepare_data  # noqa: E402
from engine.paths import BUNDLED_CORPUS  # noqa: E402
from engine.run_record import read_metrics  # noqa: E402
from engine.spec import TrainSpec  # noqa: E402
from engine.train import train  # noqa: E402
from profile_step import build_step, matmul_time  # noqa: E402  bench/, beside this script

ROWS = {
    "bench": dict(preset="small", overrides=dict(vocab_size=8000, block_size=256), seq=256, batch=8, micro=8,
                  steps=10, target=1.6),
    "small": dict(preset="tiny", overrides=dict(vocab_size=2048, block_size=256, tie_embeddings=True), seq=256,
                  batch=16, micro=8, steps=16, target=2.0),
}
SCORE_TARGET = 3.3
LOAD_MOVE_LIMIT = 1.0
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def spec_for(row: dict, args, steps: int, log_every: int, compile_: bool) -> TrainSpec:
    return TrainSpec.model_validate(dict(
        model={"preset": row["preset"], "overrides": row["overrides"]}, data={"sources": [str(BUNDLED_CORPUS)]},
        steps=steps, batch_size=row["batch"], micro_batch=row["micro"], seq_len=row["seq"], backend=args.backend,
        precision=args.precision, log_every=log_every, eval_every=steps, eval_batches=1, checkpoint_every=steps,
        keep_checkpoints=1, compile=compile_))


def engine_tokens_per_s(row: dict, args, work: Path, compile_: bool) -> tuple[float, Path]:
    """tokens/s of `engine.train.train` over row['steps'] steps after a warm-up interval (which holds the
    compilation when compiled)."""
    warm = 2
    spec = spec_for(row, args, warm + row["steps"], warm, compile_)
    out = Path(tempfile.mkdtemp(dir=work))

    def progress(line, *a, **k):
        if str(line).startswith(("step ", "resumed", "warning", "compile")):
            say(f"  engine {line}")
    train(spec, out, show_progress=False, log=progress)
    lines = [m for m in read_metrics(out) if m.get("split") == "train"][1:]  # the first interval warms up
    # the median log interval: one interval slowed by a neighbour's burst of work does not count
    return statistics.median(m["tokens_per_s"] for m in lines), out


def hf_model(cfg, compile_: bool):
    import transformers
    c = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden,
                                 num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                                 num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                                 max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                                 rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                                 attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(c)
    return torch.compile(model) if compile_ else model


def hf_tokens_per_s(row: dict, cfg, backend, data: TokenData, compile_: bool) -> float:
    torch.manual_seed(0)
    model = hf_model(cfg, compile_).to(backend.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sampler = BatchSampler(len(data), row["batch"], 0)
    accum = row["batch"] // row["micro"]

    def step(i):
        windows = sampler.windows(i)
        for m in range(accum):
            x, y = data.batch(windows[m * row["micro"]:(m + 1) * row["micro"]])
            with backend.autocast():
                loss = model(input_ids=x.to(backend.device), labels=x.to(backend.device)).loss
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    last = time.perf_counter()
    for i in range(2):
        step(i)
        if time.perf_counter() - last > 20:
            say(f"  transformers warm-up step {i + 1}/2")
            last = time.perf_counter()
    t = time.perf_counter()
    for i in range(row["steps"]):
        step(2 + i)
        if time.perf_counter() - last > 20:
            say(f"  transformers step {i + 1}/{row['steps']}")
            last = time.perf_counter()
    return row["steps"] * row["batch"] * row["seq"] / (time.perf_counter() - t)


def score_tokens_per_s(run_dir: Path, data: TokenData, backend, compile_: bool, windows_n: int = 2,
                       seconds: float = 8.0) -> float:
    """The scoring pass's own function on the trained model, as engine/rounds scores a pool: eager, or
    compiled as a long pool is (the compile left out of the timing). The best of `windows_n` windows of
    `seconds`, as every training side is the best of its trials: the ratio compares like with like."""
    from engine.evaluate import load_model
    from engine.rounds.score import sequence_losses
    model, _ = load_model(run_dir, backend, frozen=True)  # the run's newest checkpoint
    micro = 64  # the multi-round scoring micro batch (bench/multiround.py)
    windows = np.arange(min(len(data), 4 * micro))
    sequence_losses(model, *data.batch(windows[:micro]), backend, compiled=compile_)  # warm-up (and compile)
    best = 0.0
    for _ in range(windows_n):
        tokens, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            for i in range(0, len(windows), micro):
                x, y = data.batch(windows[i:i + micro])
                sequence_losses(model, x, y, backend, compiled=compile_)
                tokens += y.numel()
        best = max(best, tokens / (time.perf_counter() - t))
    return best


SIDES = (("engine", "engine (tinyforge train), eager", False), ("engine_compiled", "engine, compiled", True),
         ("transformers", "transformers eager", False), ("transformers_compiled", "transformers + torch.compile", True))


def measure_row(name: str, args, work: Path) -> dict | None:
    row = ROWS[name]
    spec = spec_for(row, args, 1, 1, False)
    backend = resolve(spec.backend, spec.precision)
    cfg = model_config(row["preset"], **row["overrides"])
    data_dir, _ = prepare_data(spec.data, log=lambda *a, **k: None)  # the cache the engine's runs use
    data = TokenData.open(data_dir, "train", row["seq"], vocab_limit=cfg.vocab_size)
    sides = [s for s in SIDES if not (args.eager_only and s[2])]
    for attempt in range(1, args.attempts + 1):
        load0 = os.getloadavg()[0]
        best, run_dir = {}, {}
        for trial in range(1, args.trials + 1):
            for key, label, compile_ in sides:
                say(f"{name}: {label}, trial {trial}/{args.trials}{' (compiling first)' if compile_ else ''}")
                if key.startswith("engine"):
                    tps, run_dir[compile_] = engine_tokens_per_s(row, args, work, compile_)
                else:
                    tps = hf_tokens_per_s(row, cfg, backend, data, compile_)
                best[key] = max(best.get(key, 0.0), tps)
                say(f"{name}: {label} {tps:,.0f} tokens/s")
        result = {"row": name, **best, "precision": backend.describe()["precision"], "load_start": load0,
                  "threads": torch.get_num_threads()}
        if "engine_compiled" in best:
            say(f"{name}: profiling the matrix multiplications of a compiled engine step (bench/profile_step.py)")
            step, _, _, _ = build_step(dict(
                model={"preset": row["preset"], "overrides": row["overrides"]}, batch_size=row["batch"],
                micro_batch=row["micro"], seq_len=row["seq"], backend=args.backend, precision=args.precision,
                compile=True))
            result["profiled_step_s"], result["matmul_s"] = matmul_time(step)
        if name == "small" and not args.no_score:
            for compile_ in sorted(run_dir):
                say(f"{name}: forward-only scoring pass (multi-round), {'compiled' if compile_ else 'eager'}")
                result["score_compiled" if compile_ else "score"] = score_tokens_per_s(
                    run_dir[compile_], data, backend, compile_, windows_n=args.trials)
        result["load_end"] = os.getloadavg()[0]
        result["load_moved"] = abs(result["load_end"] - load0) > LOAD_MOVE_LIMIT
        if not result["load_moved"]:
            return result
        say(f"{name}: load average moved {load0:.2f} -> {result['load_end']:.2f} (> {LOAD_MOVE_LIMIT}); "
            + ("measuring again" if attempt < args.attempts else "ratio withheld"))
    return result


def report(r: dict, peak: float) -> None:
    row = ROWS[r["row"]]
    cfg = model_config(row["preset"], **row["overrides"])
    load = f"load average {r['load_start']:.2f} -> {r['load_end']:.2f}"
    print(f"\n{r['row']}: hidden {cfg.n_embd}, layers {cfg.n_layer}, heads {cfg.n_head}/{cfg.n_kv_head}, vocab "
          f"{cfg.vocab_size}{' tied' if cfg.tie_embeddings else ''}, seq {row['seq']}, batch {row['batch']} (micro "
          f"{row['micro']}), precision {r['precision']}, {r['threads']} thread(s); {load}")
    fpt = flops_per_token(cfg, row["seq"])
    for key, label, _ in SIDES:
        if key in r:
            mfu = f"   {r[key] * fpt / peak:.1%} of measured matmul peak" if key.startswith("engine") else ""
            print(f"  {label:<34}{r[key]:10,.0f} tokens/s{mfu}")
    if r["load_moved"]:
        print(f"  ratios withheld: the load average moved by more than {LOAD_MOVE_LIMIT} during the row")
        return
    ours = r.get("engine_compiled", r["engine"])
    head = "compiled" if "engine_compiled" in r else "eager"
    print(f"  ratio engine ({head}) / transformers eager   {ours / r['transformers']:6.2f}x   (target >= "
          f"{row['target']}x{', or >= 85% of peak' if r['row'] == 'bench' else ''})")
    if "transformers_compiled" in r:
        print(f"  ratio engine compiled / transformers compiled   {ours / r['transformers_compiled']:6.2f}x")
    print(f"  ratio engine eager / transformers eager   {r['engine'] / r['transformers']:6.2f}x")
    if "matmul_s" in r:
        # what the matrix multiplications alone allow: the same products, with nothing else in the step
        hf_step = row["batch"] * row["seq"] / r["transformers"]
        print(f"  matmuls of a compiled engine step (profiled)   {r['matmul_s'] * 1e3:.0f} of "
              f"{r['profiled_step_s'] * 1e3:.0f} ms; with nothing but them the engine would be "
              f"{hf_step / r['matmul_s']:.2f}x transformers eager")
    # the bound no kernel can pass: every counted FLOP of a step done at the measured peak
    print(f"  at 100% of the measured matmul peak the engine would be "
          f"{peak / flops_per_token(cfg, row['seq']) / r['transformers']:.2f}x transformers eager")
    for key, train_key in (("score", "engine"), ("score_compiled", "engine_compiled")):
        if key in r:
            print(f"  scoring (forward only), {'compiled' if 'compiled' in key else 'eager':<9}{r[key]:10,.0f} tokens/s"
                  f"   = {r[key] / r[train_key]:.2f}x training {'compiled' if 'compiled' in key else 'eager'}"
                  f"   (target >= {SCORE_TARGET}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="bench,small", help="comma-separated: bench, small")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--eager-only", action="store_true",
                    help="measure eager only (no compiled engine, no transformers + torch.compile)")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--attempts", type=int, default=2)
    ap.add_argument("--no-score", action="store_true", help="skip the scoring measurement")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads for both sides (default: torch's, one per "
                                                "core; 1 when other work keeps more than the cores less 0.5 busy)")
    args = ap.parse_args()
    too_busy = None if args.threads else too_busy_for_threads(len(os.sched_getaffinity(0)))  # busy now
    if too_busy:
        args.threads = 1  # threads that wait on each other on a busy machine measure the neighbours, not the code
        say(f"{too_busy}: using 1 thread (--threads N to choose)")
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = resolve(args.backend, args.precision)
    native = bf16_native(backend.device.type)
    flags = cpu_flags()
    say(f"CPU {cpu_model()} ({os.cpu_count()} logical CPUs; avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
        f"amx_bf16 {'yes' if 'amx_bf16' in flags else 'no'}); device {backend.device}; bf16 native: {native}; "
        f"precision {backend.describe()['precision']} ({backend.notes['precision_choice']}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; host allocator: "
        f"{backend.notes['allocator']} (one process: both sides run with it)")
    say("measuring the matmul peak at this precision (1 s)")
    peak = measured_matmul_peak(str(backend.device), backend.autocast_dtype or torch.float32, n=1024, seconds=1.0)
    say(f"matmul peak {peak / 1e9:,.0f} GFLOP/s")
    results = []
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        for name in args.rows.split(","):
            results.append(measure_row(name.strip(), args, Path(tmp)))
    # a peak is the best the device does: measured again now, the machine warm (the first reading on a Zen 3
    # that had idled gave 92 GFLOP/s, then 131-176 in separate processes, and the engine's step ran above it)
    first, peak = peak, measured_matmul_peak(str(backend.device), backend.autocast_dtype or torch.float32, n=1024,
                                             seconds=1.0, remeasure=True)
    say(f"matmul peak measured again: {peak / 1e9:,.0f} GFLOP/s, the best of this and the first reading "
        f"({first / 1e9:,.0f})")
    for r in results:
        report(r, peak)
    print(f"\n(total {time.perf_counter() - T0:.0f} s; load average now {os.getloadavg()[0]:.2f}; figures taken "
          f"with other work on the machine are marked by the load averages above)")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
