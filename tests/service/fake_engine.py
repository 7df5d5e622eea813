"""A tiny engine-like command honouring docs/engine-contract.md, for testing the service's mechanics
with real subprocesses: `python fake_engine.py KIND --config FILE --out DIR`.

Writes run.json, metrics.jsonl, progress.json, checkpoints/step_N/ and result.json; resumes from the
newest checkpoint; on SIGTERM saves a checkpoint and exits 143. See fake_specs.FakeStage for knobs."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    kind = argv[0]
    cfg = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
    out = Path(argv[argv.index("--out") + 1])
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TINYFORGE_ATTEMPT", "1"))
    steps, step_time = cfg.get("steps", 5), cfg.get("step_time", 0.02)
    stop = {"term": False}
    if cfg.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))
    ckdir = out / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.name.split("_")[1]) for p in ckdir.glob("step_*") if (p / "manifest.json").exists())
    start = done[-1] if done else 0
    if rank == 0:
        atomic_write(out / "run.json", json.dumps({"kind": kind, "config": cfg, "world_size":
                                                   int(os.environ.get("WORLD_SIZE", "1")), "started_at": time.time()}))
        with open(out / "starts.log", "a") as f:
            f.write(f"{attempt} {start}\n")
    print(f"{kind}: starting at step {start} of {steps} (attempt {attempt}, rank {rank})", flush=True)
    for i in range(cfg.get("lines", 0)):
        print(f"line {i}", flush=True)

    def checkpoint(step: int) -> None:
        if rank == 0:
            d = ckdir / f"step_{step:08d}"
            d.mkdir(exist_ok=True)
            (d / "model.bin").write_text(str(step))
            atomic_write(d / "manifest.json", json.dumps({"step": step}))

    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    for step in range(start + 1, steps + 1):
        if cfg.get("exit_code") is not None and step > cfg.get("fail_at", 0) and attempt <= cfg.get("fail_attempts", 1000):
            print(f"error: failing on purpose with exit code {cfg['exit_code']}", file=sys.stderr, flush=True)
            return cfg["exit_code"]
        time.sleep(step_time)
        if metrics:
            metrics.write(json.dumps({"step": step, "time": time.time(), "split": "train", "loss": 10.0 / step,
                                      "lr": 0.001}) + "\n")
            if step % 2 == 0:
                metrics.write(json.dumps({"step": step, "time": time.time(), "split": "val", "loss": 11.0 / step})
                              + "\n")
            metrics.flush()
        if step % cfg.get("checkpoint_every", 1) == 0 or step == steps:
            checkpoint(step)
        if rank == 0:
            atomic_write(out / "progress.json", json.dumps({"step": step, "total_steps": steps,
                                                            "eta_s": (steps - step) * step_time, "phase": "train"}))
        print(f"step {step} loss {10.0 / step:.4f}", flush=True)
        if stop["term"]:
            checkpoint(step)
            print(f"error: stopped by SIGTERM at step {step} after saving a checkpoint", file=sys.stderr, flush=True)
            return 143
    if rank != 0 or cfg.get("no_result"):
        return 0
    artifacts = []
    for a in cfg.get("artifacts", [{"name": "checkpoint", "type": "checkpoint"}]):
        p = out / "artifacts" / a["name"]
        if a["type"] in ("checkpoint", "model"):
            p.mkdir(parents=True, exist_ok=True)
            (p / "weights.bin").write_text(f"{kind} {steps}")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{kind} {a['name']}")
        artifacts.append({"name": a["name"], "type": a["type"], "path": str(p.relative_to(out))})
    starts = [line.split() for line in (out / "starts.log").read_text().splitlines()]
    atomic_write(out / "result.json", json.dumps({
        "kind": kind, "artifacts": artifacts, "inputs": [cfg["source"]] if cfg.get("source") else [],
        "summary": {"steps": steps, "echo": cfg.get("echo"), "starts": [[int(a), int(s)] for a, s in starts],
                    "final_loss": 10.0 / steps,
                    "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}))
    print(f"{kind}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
