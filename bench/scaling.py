"""Data-parallel scaling on this machine: tokens/s at 1 and 2 processes (CPU, gloo) for DDP and each
DeepSpeed ZeRO stage, and peak memory per rank. Both runs use every core (1 process x all threads,
2 processes x half the threads each), so scaling efficiency is 2-process tokens/s over 1-process
tokens/s (1.0 = data parallelism costs nothing over intra-op threading on the same cores); also each
ZeRO stage's peak memory per rank against DDP at 2 processes.

Usage: python bench/scaling.py [--steps 12] [--preset small]"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def worker(config: str, out: str) -> None:
    """One rank: train, then report tokens/s (median of logged intervals after the first) and peak RSS."""
    from engine.run_record import read_metrics
    from engine.spec import load
    from engine.train import train

    train(load("train", config), out, show_progress=False, log=lambda *a: None)
    rows = [r for r in read_metrics(out) if r.get("split") == "train"] if os.environ.get("RANK", "0") == "0" else []
    tps = statistics.median(r["tokens_per_s"] for r in rows[1:]) if len(rows) > 1 else None
    print("RESULT " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "tokens_per_s": tps,
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(strategy: str, nproc: int, args, tmp: Path) -> dict:
    cfg = {"model": {"preset": args.preset}, "data": {"sources": [str(REPO / "data" / "sample")]},
           "steps": args.steps, "batch_size": 8, "micro_batch": 4, "log_every": 2,
           "eval_every": 10**6, "checkpoint_every": 10**6, "precision": "fp32", "parallel": {"strategy": strategy}}
    path = tmp / f"{strategy}-{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp / f"run-{strategy}-{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           __file__, "--worker", str(path), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(2 // nproc)})
    if proc.returncode:
        raise SystemExit(f"{strategy} x{nproc} failed:\n{proc.stderr[-2000:]}")
    results = [json.loads(l[7:]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    return {"tokens_per_s": next(r["tokens_per_s"] for r in results if r["rank"] == 0),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    os.environ.setdefault("TINYFORGE_HOME", str(REPO / ".tinyforge"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "zero1", "zero2", "zero3"):
            for nproc in (1, 2):
                rows[(strategy, nproc)] = run(strategy, nproc, args, Path(tmp))
                print(f"  {strategy} x{nproc}: {rows[(strategy, nproc)]}", file=sys.stderr)
    print(f"preset {args.preset}, global batch 8 x seq, fp32, gloo on {os.cpu_count()} CPU cores "
          "(same cores both ways: 1 process x 2 threads vs 2 processes x 1 thread; efficiency = x2 / x1)")
    print(f"{'strategy':8} {'tok/s x1':>10} {'tok/s x2':>10} {'efficiency':>10} {'peak MB/rank x1':>16} "
          f"{'peak MB/rank x2':>16} {'memory vs DDP x2':>17}")
    ddp_mem = rows[("ddp", 2)]["peak_rss_mb"]
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        one, two = rows[(strategy, 1)], rows[(strategy, 2)]
        eff = two["tokens_per_s"] / one["tokens_per_s"]
        print(f"{strategy:8} {one['tokens_per_s']:10,.0f} {two['tokens_per_s']:10,.0f} {eff:10.2f} "
              f"{one['peak_rss_mb']:16,.0f} {two['peak_rss_mb']:16,.0f} {two['peak_rss_mb'] / ddp_mem:16.2f}x")


if __name__ == "__main__":
    main()
