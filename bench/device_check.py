"""The device check (issue 17): everything that needs a GPU, in one command, under 8 minutes on one GPU.
Prints a summary and writes it as JSON.

  bench/device_check.sh                      # = python bench/device_check.py --out ${OUT:-.}/device_check.json
  python bench/device_check.py [--out FILE] [--dry-run] [--budget-s 470]

Parts, each a subprocess with its own time limit (a crash or hang in one is reported, the rest still run):
1. tests: every gpu-marked test in tests/engine/ops/test_triton.py and tests/engine/test_gpu_paths.py: the Triton
   kernels in bf16 against the reference, Liger against the reference, rms_norm at width 65,536, Liger rope not
   touching its input, resume under `deterministic: true` bit-identical on CUDA (and to a tolerance without).
2. kernels: bench/kernels.py, each fused op against eager and Liger: time and peak memory.
3. step: a pangu-pi-1b-pro training step (bf16, seq 2048, the largest micro batch that fits, fused table):
   tokens/s and MFU against the vendor's bf16 peak (engine/peaks.py).
4. not_checked: what one device cannot show, listed as such.
Targets (an H200-class GPU): each fused op >= 1.5x eager and no slower than Liger; fused cross-entropy at
most 1/4 of eager's peak memory; the 1B preset at >= 45% MFU. Exit status 0 when every part ran and
every target was met, 1 otherwise.

--dry-run runs the same parts on a machine without a GPU at CPU sizes (the gpu tests skip, the kernels
benchmark times eager, the step is the micro preset at seq 128): it shows the script itself works.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"op_speedup_vs_eager": 1.5, "op_time_vs_liger": 1.0, "ce_peak_memory_vs_eager": 0.25, "mfu_1b": 0.45}
GPU_TEST_FILES = ["tests/engine/ops/test_triton.py", "tests/engine/test_gpu_paths.py"]
NOT_CHECKED = [
    "DDP and ZeRO 1/2/3 across GPUs over NCCL (one device; the gloo versions run in tests/engine/test_distributed.py)",
    "Triton launches on a second rank's device (tests/engine/test_gpu_paths.py::"
    "test_triton_kernels_run_on_the_bound_device_of_a_second_rank skips with one GPU)",
    "ZeRO-Offload on a GPU (its configuration is tested on CPU, deepspeed.initialize included)",
    "the Ascend paths (torch_npu operators, the 910A table, HCCL): no NPU",
    "the worker's device assignment on a multi-GPU host (tested with a faked CUDA_VISIBLE_DEVICES)",
]
# part -> share of the budget
SHARES = {"tests": 0.45, "kernels": 0.2}  # the step gets what is left (at least a minute)


def run_part(name: str, argv: list[str], timeout: float, env: dict | None = None) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        out = {"returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    except subprocess.TimeoutExpired as exc:
        tail = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        out = {"returncode": None, "timed_out_after_s": timeout, "output_tail": tail[-4000:]}
    out["seconds"] = round(time.perf_counter() - t, 1)
    print(f"[{name}] {'timed out' if out['returncode'] is None else 'exit ' + str(out['returncode'])} "
          f"in {out['seconds']} s", flush=True)
    return out


def junit_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skip_reasons": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            counts["skip_reasons"].append(f"{name}: {skip.get('message', '')}"[:200])
        else:
            counts["passed"] += 1
    return counts


def judge_kernels(data: dict) -> list[dict]:
    verdicts = []
    for row in data.get("operators", []):
        eager_t, eager_m = row["eager"]
        if "fused" not in row:
            continue
        fused_t, fused_m = row["fused"]
        v = {"op": row["op"], "impl": row["impl"], "eager_ms": eager_t * 1e3, "fused_ms": fused_t * 1e3,
             "speedup_vs_eager": eager_t / fused_t, "peak_memory_vs_eager": fused_m / max(eager_m, 1)}
        v["meets_speedup"] = v["speedup_vs_eager"] >= TARGETS["op_speedup_vs_eager"]
        if "liger" in row:
            v["liger_ms"] = row["liger"][0] * 1e3
            v["time_vs_liger"] = fused_t / row["liger"][0]
            v["meets_liger"] = v["time_vs_liger"] <= TARGETS["op_time_vs_liger"]
        if row["op"] == "linear_cross_entropy":
            v["meets_memory"] = v["peak_memory_vs_eager"] <= TARGETS["ce_peak_memory_vs_eager"]
        verdicts.append(v)
    return verdicts


def step_main(args) -> None:
    """Part 3, in its own process: the largest micro batch that fits, then timed steps."""
    import torch

    from engine.arch import flops_per_token, training_memory_bytes
    from engine.backend import resolve
    from engine.config import model_config
    from engine.peaks import device_peak
    from synthetic_step import synthetic_step  # bench/, beside this script

    backend = resolve("cpu", "fp32") if args.dry_run else resolve("cuda", "bf16")
    preset, seq = ("micro", 128) if args.dry_run else ("pangu-pi-1b-pro", 2048)
    candidates = (2, 1) if args.dry_run else (32, 24, 16, 12, 8, 6, 4, 2, 1)
    cfg = model_config(preset, **({"vocab_size": 512} if args.dry_run else {}))  # micro takes it from a tokenizer
    seq = min(seq, cfg.block_size)
    peak, source = device_peak(backend.device, backend.autocast_dtype)
    sync = (lambda: torch.cuda.synchronize()) if backend.device.type == "cuda" else (lambda: None)
    if backend.device.type == "cuda":  # skip sizes whose estimate (a lower bound) already exceeds free memory
        free = torch.cuda.mem_get_info()[0]
        candidates = [m for m in candidates
                      if training_memory_bytes(cfg, m, seq, True, True)["total"] < 0.95 * free] or [1]
    result = {"preset": preset, "seq": seq, "precision": backend.describe()["precision"], "ops": backend.ops.chosen,
              "peak_flops": peak, "peak_source": source, "tried": []}
    for micro in candidates:
        model = step = None
        try:
            model, step = synthetic_step(cfg, backend.ops, backend, micro, seq)
            for _ in range(2):  # compile and allocate outside the measurement
                step()
            sync()
            if backend.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            sync()
            dt = time.perf_counter() - t
        except torch.OutOfMemoryError:
            result["tried"].append({"micro_batch": micro, "fits": False})
            model = step = None  # free this size's memory (the step holds the optimizer and batch) before the next
            if backend.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        tps = args.steps * micro * seq / dt
        result.update(micro_batch=micro, steps=args.steps, tokens_per_s=tps, loss=float(loss),
                      mfu=tps * flops_per_token(cfg, seq) / peak,
                      peak_memory_gib=(torch.cuda.max_memory_allocated() / 2**30
                                       if backend.device.type == "cuda" else None))
        result["tried"].append({"micro_batch": micro, "fits": True})
        break
    Path(args.part_json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "device_check.json"))
    ap.add_argument("--dry-run", action="store_true", help="no GPU: run every part at CPU sizes")
    ap.add_argument("--budget-s", type=float, default=470.0, help="time for all parts together")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--part", choices=["step"], help=argparse.SUPPRESS)
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part == "step":
        step_main(args)
        return 0

    import torch
    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    if not gpu and not args.dry_run:
        print("device_check: no CUDA device here (torch.cuda.is_available() is False); use --dry-run to check "
              "the script itself on a CPU", file=sys.stderr)
        return 2
    summary = {"dry_run": args.dry_run, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)",
               "device_count": torch.cuda.device_count() if gpu else 0, "targets": TARGETS}
    for pkg in ("triton", "liger_kernel", "deepspeed", "flash_attn"):
        try:
            summary[pkg] = __import__(pkg).__version__
        except Exception as exc:  # absent or broken: worth knowing, not fatal
            summary[pkg] = f"unavailable ({type(exc).__name__})"
    print(f"device_check: {summary['device']}, torch {summary['torch']}, triton {summary['triton']}, "
          f"liger {summary['liger_kernel']}", flush=True)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. gpu-marked tests (all skip in a dry run; the run still proves they collect and import)
        xml = tmp / "gpu_tests.xml"
        part = run_part("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=",
                                  f"--junitxml={xml}", *GPU_TEST_FILES], SHARES["tests"] * args.budget_s)
        summary["tests"] = {**part, **junit_counts(xml)}
        # 2. kernels
        kjson = tmp / "kernels.json"
        part = run_part("kernels", [py, "bench/kernels.py", "--repeats", "1" if args.dry_run else "5",
                                    "--steps", "0", "--json", str(kjson)],  # part 3 times the step
                        SHARES["kernels"] * args.budget_s)
        data = json.loads(kjson.read_text()) if kjson.exists() else {}
        summary["kernels"] = {**part, "operators": judge_kernels(data), "whole_step": data.get("whole_step")}
        # 3. the 1B training step
        sjson = tmp / "step.json"
        remaining = args.budget_s - (time.perf_counter() - started)
        part = run_part("step", [py, __file__, "--part", "step", "--part-json", str(sjson), "--steps", str(args.steps),
                                 *(["--dry-run"] if args.dry_run else [])], max(60.0, remaining))
        summary["step"] = {**part, **(json.loads(sjson.read_text()) if sjson.exists() else {})}
    summary["not_checked"] = NOT_CHECKED
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    summary["verdict"] = verdict(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print_summary(summary, args.out)
    return 0 if summary["verdict"]["all_met"] else 1


def verdict(s: dict) -> dict:
    ops = s["kernels"]["operators"]
    v = {"tests_ran": s["tests"].get("returncode") in (0, 5) and "passed" in s["tests"],
         "tests_failed": s["tests"].get("failed", None),
         "kernels_ran": s["kernels"].get("returncode") == 0,
         "step_ran": "tokens_per_s" in s["step"],
         "ops_below_speedup": [o["op"] for o in ops if not o["meets_speedup"]],
         "ops_slower_than_liger": [o["op"] for o in ops if o.get("meets_liger") is False],
         "ce_memory_met": next((o["meets_memory"] for o in ops if "meets_memory" in o), None),
         "mfu_met": (s["step"]["mfu"] >= TARGETS["mfu_1b"]) if "mfu" in s["step"] else None}
    v["all_met"] = bool(v["tests_ran"] and v["tests_failed"] == 0 and v["kernels_ran"] and v["step_ran"]
                        and not v["ops_below_speedup"] and not v["ops_slower_than_liger"]
                        and v["ce_memory_met"] and v["mfu_met"] and not s["dry_run"])
    return v


def print_summary(s: dict, out: str) -> None:
    t = s["tests"]
    print(f"\n== device check: {s['device']} ({'DRY RUN, no GPU' if s['dry_run'] else 'GPU'}), {s['elapsed_s']} s ==")
    print(f"gpu tests: {t.get('passed', '?')} passed, {t.get('failed', '?')} failed, {t.get('skipped', '?')} skipped"
          + (f"; failed: {', '.join(t['failures'])}" if t.get("failures") else ""))
    for o in s["kernels"]["operators"]:
        extra = f", {o['time_vs_liger']:.2f}x Liger's time" if "time_vs_liger" in o else ""
        print(f"  {o['op']:<21} {o['impl']:<8} {o['speedup_vs_eager']:.2f}x eager{extra}, "
              f"peak memory {o['peak_memory_vs_eager']:.3f} of eager")
    st = s["step"]
    if "tokens_per_s" in st:
        print(f"step {st['preset']} seq {st['seq']} micro-batch {st['micro_batch']} ({st['precision']}): "
              f"{st['tokens_per_s']:,.0f} tokens/s, MFU {st['mfu']:.1%} ({st['peak_source']})")
    else:
        print(f"step: did not run ({st.get('output_tail', '')[-300:]})")
    print("not checked with one device: " + "; ".join(s["not_checked"]))
    print(f"verdict: {json.dumps(s['verdict'])}")
    print(f"summary written to {out}")


if __name__ == "__main__":
    sys.exit(main())
