"""What a stage records in its run directory (docs/engine-contract.md): run.json, metrics.jsonl,
progress.json, events.jsonl, result.json. Only rank 0 writes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


class RunRecord:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.dir = Path(out_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def start(self, kind: str, config: dict, **meta) -> None:
        if self.enabled:
            write_json_atomic(self.dir / "run.json", {"kind": kind, "config": config, "started_at": time.time(), **meta})

    def _append(self, name: str, row: dict) -> None:
        if self.enabled:
            with open(self.dir / name, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def metric(self, **row) -> None:
        self._append("metrics.jsonl", row)

    def event(self, kind: str, message: str, **extra) -> None:
        self._append("events.jsonl", {"event": kind, "message": message, **extra})

    def progress(self, step: int, total: int, eta_s: float | None, phase: str) -> None:
        if self.enabled:
            write_json_atomic(self.dir / "progress.json", {"step": step, "total_steps": total,
                                                           "eta_s": None if eta_s is None else round(eta_s, 1),
                                                           "phase": phase})

    def result(self, kind: str, summary: dict, artifacts: list[dict], inputs: list[str] = ()) -> dict:
        res = {"kind": kind, "summary": summary, "inputs": list(inputs),
               "artifacts": [{**a, "path": os.path.relpath(a["path"], self.dir)} for a in artifacts]}
        if self.enabled:
            write_json_atomic(self.dir / "result.json", res)
        return res


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
