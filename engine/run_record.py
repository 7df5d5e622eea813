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


class RunObserver:
    """Sees each record a run writes, just before it is written (rank 0 only, as the records): a stage that
    runs another inside itself (rounds trains each round, the ablation each arm) follows it through this
    instead of re-reading its files. Called first, a record the observer copied elsewhere is never missing
    there after a kill: a resumed run writes it again. `on_result` returns the result to write, so fields
    the caller adds land in the one atomic write of result.json, the run's done marker. Override what you
    need; the defaults do nothing."""

    def on_metric(self, row: dict) -> None:
        """A metrics.jsonl row (`time`, `step`, `split`, the figures)."""

    def on_event(self, row: dict) -> None:
        """An events.jsonl row (`time`, `event`, `message`, extra fields)."""

    def on_progress(self, row: dict) -> None:
        """progress.json's content (`step`, `total_steps`, `eta_s`, `phase`)."""

    def on_result(self, result: dict) -> dict:
        """result.json's content (artifact paths relative to the run directory); returns what to write."""
        return result


class RunRecord:
    def __init__(self, out_dir: str | Path, enabled: bool = True, observer: RunObserver | None = None):
        self.dir = Path(out_dir)
        self.enabled = enabled
        self.observer = observer or RunObserver()
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def start(self, kind: str, config: dict, **meta) -> None:
        if self.enabled:
            write_json_atomic(self.dir / "run.json", {"kind": kind, "config": config, "started_at": time.time(), **meta})

    def _append(self, name: str, row: dict) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metric(self, **row) -> None:
        if self.enabled:
            row = {"time": round(time.time(), 3), **row}
            self.observer.on_metric(row)
            self._append("metrics.jsonl", row)

    def event(self, kind: str, message: str, **extra) -> None:
        if self.enabled:
            row = {"time": round(time.time(), 3), "event": kind, "message": message, **extra}
            self.observer.on_event(row)
            self._append("events.jsonl", row)

    def progress(self, step: int, total: int, eta_s: float | None, phase: str) -> None:
        if self.enabled:
            row = {"step": step, "total_steps": total, "eta_s": None if eta_s is None else round(eta_s, 1),
                   "phase": phase}
            self.observer.on_progress(row)
            write_json_atomic(self.dir / "progress.json", row)

    def result(self, kind: str, summary: dict, artifacts: list[dict], inputs: list[str] = ()) -> dict:
        res = {"kind": kind, "summary": summary, "inputs": list(inputs),
               "artifacts": [{**a, "path": os.path.relpath(a["path"], self.dir)} for a in artifacts]}
        if self.enabled:
            res = self.observer.on_result(res)
            write_json_atomic(self.dir / "result.json", res)
        return res


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
