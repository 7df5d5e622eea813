"""The one fake engine of the service-level tests: `python tests/support/fake_engine.py KIND --config FILE
--out DIR`, honouring docs/engine-contract.md with real subprocesses in a fraction of a second. The run
directory is recorded through engine/run_record.py (run.json, metrics.jsonl, progress.json, result.json),
as the real stages record it; only the checkpoints are the fake's own (checkpoints/step_N/manifest.json).

Resumes from the newest checkpoint; on SIGTERM saves a checkpoint and exits 143; fails on request
(exit_code, fail_at, fail_attempts). With $CHAOS_SIDE_EFFECTS set, appends `JOB_ID ATTEMPT PID` to that
file first, so a test can count how often each job's stage really ran (O_APPEND: lines never interleave).
With bulk_chunks, records `steps` points in that many large writes (see _bulk). Run as
`fake_engine.py --hostile KIND ...` it is the hostile-input tests' engine (see _hostile). Knobs: FakeStage
(tests/support/fake_specs.py)."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from engine.run_record import RunRecord, write_json_atomic


def _side_effect() -> None:
    path = os.environ.get("CHAOS_SIDE_EFFECTS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{os.environ.get('TINYFORGE_JOB_ID')} {os.environ.get('TINYFORGE_ATTEMPT')} "
                     f"{os.getpid()}\n".encode())
        os.close(fd)


def _bulk(kind: str, cfg: dict, record: RunRecord) -> int:
    """`steps` train points of loss and lr and a held-out loss every 100 steps, in `bulk_chunks` writes of
    many lines each (RunRecord appends one row per call; a stage that writes megabytes at once, as a
    trainer flushing a buffer does, is what the final-flush test needs). A rounds stage also records a
    per-round table in its summary, shaped like the engine's (engine/rounds/run.py)."""
    steps = cfg.get("steps", 5)
    chunk = max(1, steps // cfg["bulk_chunks"])
    t0, loss = time.time(), 0.0
    for start in range(1, steps + 1, chunk):
        rows = []
        for step in range(start, min(steps, start + chunk - 1) + 1):
            # a decaying loss with a periodic wiggle, so each downsampled bucket has a real min-max band
            loss = 2.0 + 8.0 / math.sqrt(step) + 0.3 * math.sin(step / 7.0)
            rows.append(json.dumps({"time": t0, "step": step, "split": "train", "loss": loss, "lr": 1e-3}))
            if step % 100 == 0:
                rows.append(json.dumps({"time": t0, "step": step, "split": "val", "loss": loss + 0.2}))
        with open(record.dir / "metrics.jsonl", "a") as f:
            f.write("\n".join(rows) + "\n")
        record.progress(step, steps, 0, "train")
        time.sleep(0.1)
    print(f"{kind}: recorded {steps} steps", flush=True)
    summary = {"steps": steps, "final_loss": loss}
    if kind == "rounds":  # two rounds over the halves of the run; the second replays hard samples
        half = steps // 2
        summary["rounds"] = [
            {"round": k, "steps": half, "tokens": half * 4096, "val_loss": 2.2 + 8.0 / math.sqrt(half * k),
             **({"selection": {"strategy": "hard", "seed": 0, "n_selected": half // 2}} if k == 2 else {})}
            for k in (1, 2)]
    record.result(kind, summary, [])
    return 0


def _hostile(kind: str, cfg: dict, record: RunRecord, out: Path) -> int:
    """Puts the config's `echo` text wherever a stage's own text reaches the user: stdout and stderr lines,
    the progress phase, an artifact name, an input path (lineage), the result summary (a value and a table
    row) and, with `exit_code`, the `error:` line the failure reason is taken from; and one line of raw
    bytes (a NUL, invalid UTF-8), as a stage dumping binary prints."""
    text, steps = str(cfg.get("echo") or ""), int(cfg.get("steps", 2))
    print(f"stdout says: {text}", flush=True)
    print(f"stderr says: {text}", file=sys.stderr, flush=True)
    os.write(1, b"raw bytes: \x00 \xff\xfe\n")
    for step in range(1, steps + 1):
        record.metric(step=step, split="train", loss=1.0 / step)
    record.progress(steps, steps, None, text[:60])
    if cfg.get("exit_code") is not None:
        print(f"error: {text}", file=sys.stderr, flush=True)
        return int(cfg["exit_code"])
    art = out / "artifacts" / "notes.txt"
    art.parent.mkdir(parents=True, exist_ok=True)
    art.write_text(text)
    record.result(kind, {"note": text, "steps": steps, "rows": [{"label": text, "loss": 1.0}]},
                  [{"name": text[:100] or "notes", "type": "text", "path": str(art)}], [f"/data/{text}"])
    return 0


def main(argv: list[str]) -> int:
    hostile = argv[0] == "--hostile"
    argv = argv[1:] if hostile else argv
    kind = argv[0]
    cfg = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
    out = Path(argv[argv.index("--out") + 1])
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TINYFORGE_ATTEMPT", "1"))
    _side_effect()
    record = RunRecord(out, enabled=rank == 0)  # only rank 0 records, as in the engine
    record.start(kind, cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if hostile:
        return _hostile(kind, cfg, record, out)
    if cfg.get("bulk_chunks"):
        return _bulk(kind, cfg, record) if rank == 0 else 0
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
            write_json_atomic(d / "manifest.json", {"step": step})

    for step in range(start + 1, steps + 1):
        if cfg.get("exit_code") is not None and step > cfg.get("fail_at", 0) and attempt <= cfg.get("fail_attempts", 1000):
            print(f"error: failing on purpose with exit code {cfg['exit_code']}", file=sys.stderr, flush=True)
            return cfg["exit_code"]
        time.sleep(step_time)
        record.metric(step=step, split="train", loss=10.0 / step, lr=0.001)
        if step % 2 == 0:
            record.metric(step=step, split="val", loss=11.0 / step)
        if step % cfg.get("checkpoint_every", 1) == 0 or step == steps:
            checkpoint(step)
        record.progress(step, steps, (steps - step) * step_time, "train")
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
        artifacts.append({"name": a["name"], "type": a["type"], "path": str(p)})
    starts = [line.split() for line in (out / "starts.log").read_text().splitlines()]
    record.result(kind, {"steps": steps, "echo": cfg.get("echo"), "starts": [[int(a), int(s)] for a, s in starts],
                         "final_loss": 10.0 / steps, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
                  artifacts, [cfg["source"]] if cfg.get("source") else [])
    print(f"{kind}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
