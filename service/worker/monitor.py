"""Watching one running stage process: its output lines into `log_lines`, metrics.jsonl into
`metric_points` (the byte offset committed with the points, so a resumed stage neither loses nor
repeats a line; steps recomputed after a resume replace the old values), progress.json into the stage
row -- one fenced transaction per heartbeat, which also renews the lease and reads cancel requests.
Stopping is SIGTERM, then SIGKILL after the grace period; the exit code becomes an outcome."""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import re
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from service.db.models import Artifact, Job, LogLine, MetricPoint, Stage, new_id
from service.services import lifecycle
from service.settings import Settings
from service.worker.lease import Lease, LeaseLost

METRICS_BLOCK = 8 << 20  # bytes of metrics.jsonl one flush (one transaction) reads
log = logging.getLogger("tinyforge.worker")
MAX_LINE = 16_384
EXIT_CLASS = {2: "user", 3: "infra", 143: "preempted"}  # anything else: infra


@dataclass
class Outcome:
    status: str  # succeeded failed cancelled preempted lost
    failure_class: str | None = None
    reason: str | None = None
    exit_code: int | None = None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _storable(text: str) -> str:
    """A stage's output is stored as is but for NUL, which PostgreSQL text and jsonb refuse."""
    return text.replace("\x00", "\ufffd")


def _finite(value):
    """NaN/infinity (json.loads accepts them) become None: JSON columns and responses refuse them.
    Strings lose their NULs (see _storable)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return {_storable(str(k)): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class StageMonitor:
    """Watches one running stage process until it exits (or must be stopped). Every write goes through
    the attempt's lease, the same one the runner holds (lease.py)."""

    def __init__(self, lease: Lease, settings: Settings, stop: threading.Event, worker_id: str, job: Job,
                 st: Stage, run_dir: Path, proc, metrics_offset: int, last_steps: dict):
        self.lease, self.settings, self.stop, self.worker_id = lease, settings, stop, worker_id
        self.job, self.st, self.run_dir, self.proc = job, st, run_dir, proc
        self.offset = metrics_offset
        self.lines: list[tuple[str, float, str]] = []
        self.last_steps = last_steps  # (key, split) -> highest step stored
        self.lines.append(("system", time.time(),
                           f"attempt {lease.attempt}, stage {st.name}: $ {shlex.join(proc.command)}"))
        self.stderr_tail: collections.deque = collections.deque(maxlen=50)
        self.progress_mtime = 0.0
        self.stop_reason: str | None = None
        self.term_at: float | None = None
        self.killed = False

    # what the engine wrote since the last flush
    def _read_metrics(self) -> tuple[list[dict], int]:
        path = self.run_dir / "metrics.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return [], self.offset
        if size < self.offset:  # rewritten, which the contract does not allow: do not re-ingest
            return [], size
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read(METRICS_BLOCK)
        end = data.rfind(b"\n") + 1  # complete lines only
        points = []
        for raw in data[:end].splitlines():
            try:
                obj = json.loads(raw)
                step = int(obj["step"])
            except (ValueError, KeyError, TypeError):
                continue
            split = _storable(str(obj.get("split", "train"))[:32])
            t = obj.get("time") if isinstance(obj.get("time"), (int, float)) else None
            for key, value in obj.items():
                if key in ("step", "split", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    points.append({"job_id": self.job.id, "stage_id": self.st.id, "split": split, "key": _storable(key[:64]),
                                   "step": step, "value": float(value), "time": t})
        return points, self.offset + end

    def _metrics_backlog(self) -> int:
        """Bytes of metrics.jsonl not yet stored."""
        try:
            return (self.run_dir / "metrics.jsonl").stat().st_size - self.offset
        except FileNotFoundError:
            return 0

    def _read_progress(self) -> dict | None:
        path = self.run_dir / "progress.json"
        try:
            mtime = path.stat().st_mtime
            if mtime == self.progress_mtime:
                return None
            p = json.loads(path.read_text())
            self.progress_mtime = mtime
        except (OSError, ValueError):
            return None
        out = {}
        for key, conv in (("step", int), ("total_steps", int), ("eta_s", float), ("phase", str)):
            if p.get(key) is not None:
                with contextlib.suppress(TypeError, ValueError):
                    out[key] = conv(p[key])
        return out

    def flush(self, extra=None) -> bool:
        """One fenced transaction: extend the lease, store lines/metrics/progress. Returns cancel_requested."""
        points, new_offset = self._read_metrics()
        progress = self._read_progress()
        lines = [{"job_id": self.job.id, "stage_id": self.st.id, "attempt": self.lease.attempt, "stream": stream,
                  "time": t, "line": line[:MAX_LINE]} for stream, t, line in self.lines]
        # a stage resumed from a checkpoint recomputes the steps after it: the new values replace the old
        # ones, whether those are already stored (cut) or earlier in this batch
        keep, cut, seen = [], {}, dict(self.last_steps)
        for p in points:
            k = (p["key"], p["split"])
            if k in seen and p["step"] <= seen[k]:
                keep = [q for q in keep if (q["key"], q["split"]) != k or q["step"] < p["step"]]
                if self.last_steps.get(k, -1) >= p["step"]:
                    cut[k] = min(cut.get(k, p["step"]), p["step"])
                seen[k] = p["step"]
            seen[k] = max(seen.get(k, p["step"]), p["step"])
            keep.append(p)
        points = keep
        with self.lease.write() as s:
            if lines:
                s.execute(insert(LogLine), lines)
            for (key, split), step in cut.items():
                s.execute(delete(MetricPoint).where(MetricPoint.stage_id == self.st.id, MetricPoint.key == key,
                                                    MetricPoint.split == split, MetricPoint.step >= step))
            if points:
                s.execute(insert(MetricPoint), points)
            values = {"metrics_offset": new_offset, **(progress or {})}
            s.execute(update(Stage).where(Stage.id == self.st.id).values(**values))
            if extra:
                extra(s)
            cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.job.id)))
        self.lines, self.offset = [], new_offset
        self.last_steps = seen
        return cancel

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.term_at = reason, time.time()
            self.proc.terminate()

    def run(self) -> Outcome:
        settings = self.settings
        last_flush = 0.0
        lost = False
        while True:
            rc = self.proc.poll()
            self._take_lines(final=rc is not None)
            now = time.time()
            if rc is not None:
                break
            if not lost and (now - last_flush >= settings.heartbeat_s or len(self.lines) > 2000):
                try:
                    if self.flush():
                        self._stop("cancelled")
                    last_flush = now
                except LeaseLost:
                    lost = True
                    self._stop("lost")
                except SQLAlchemyError as exc:  # keep the lines; retry next beat
                    log.warning("flush failed: %s", exc)
                    if self.lease.expired(now):
                        lost = True
                        self._stop("lost")
            if self.job.time_limit_s and self.job.started_at and now - self.job.started_at > self.job.time_limit_s:
                self._stop("time_limit")
            if self.stop.is_set():
                self._stop("shutdown")
            if self.term_at and not self.killed and now - self.term_at > settings.cancel_grace_s:
                self.proc.kill()
                self.killed = True
                self.lines.append(("system", now, f"no exit {settings.cancel_grace_s:g}s after SIGTERM: sent SIGKILL"))
            time.sleep(0.05)
        if lost:
            return Outcome("lost")
        return self.lease.retrying(lambda: self._record_exit(rc))

    def _take_lines(self, final: bool = False) -> None:
        for stream, t, text in (self.proc.drain_final() if final else self.proc.drain()):
            item = (stream, t, _storable(text))
            self.lines.append(item)
            if item[0] == "stderr":
                self.stderr_tail.append(item[2])

    def _error_line(self, rc: int) -> str:
        errors = [x for x in self.stderr_tail if x.startswith("error:")]
        last = errors[-1] if errors else (self.stderr_tail[-1] if self.stderr_tail else "")
        return f"stage {self.st.name} exited {rc}" + (f": {last[:2000]}" if last else "")

    def _exit_code(self, rc: int) -> int:
        """torchrun exits 1 whatever its ranks did; its summary names the first failed rank's code."""
        if rc == 1:
            for line in reversed(self.stderr_tail):
                m = re.search(r"exitcode\s*:\s*(-?\d+)", line)
                if m:
                    code = int(m.group(1))
                    return 128 - code if code < 0 else code
        return rc

    def _result(self) -> tuple[dict | None, str | None]:
        path = self.run_dir / "result.json"
        try:
            result = json.loads(path.read_text())
        except FileNotFoundError:
            return None, "exited 0 without writing result.json"
        except ValueError as exc:
            return None, f"result.json is not valid JSON: {exc}"
        if not isinstance(result, dict):
            return None, "result.json is not an object"
        return _finite(result), None

    def _record_exit(self, rc: int) -> Outcome:
        now = time.time()
        code = self._exit_code(rc)
        result, problem = self._result() if code == 0 else (None, None)
        root = self.run_dir.resolve()
        artifacts, warnings = [], []
        if result is not None:
            for a in result.get("artifacts") or []:
                try:
                    path = (root / a["path"]).resolve()
                    name, type_ = str(a["name"])[:128], str(a.get("type", "data"))[:32]
                except (KeyError, TypeError):
                    warnings.append(f"result.json: artifact entry {a!r} needs name and path")
                    continue
                if not path.is_relative_to(root) or not path.exists():
                    warnings.append(f"result.json: artifact {name} path {a['path']!r} is missing or outside the "
                                    "run directory; not registered")
                    continue
                artifacts.append(Artifact(id=new_id("f"), job_id=self.job.id, stage_id=self.st.id, name=name,
                                          type=type_, path=str(path), size_bytes=_size(path), created_at=now))
        for w in warnings:
            self.lines.append(("system", now, w))

        def record(s):
            row = s.get(Stage, self.st.id)
            row.exit_code = code
            if result is not None:
                row.status, row.finished_at = "succeeded", now
                row.summary = result.get("summary") if isinstance(result.get("summary"), dict) else {}
                row.inputs = (row.inputs or []) + [{"path": str(p), "role": "input"} for p in
                                                   (result.get("inputs") or []) if isinstance(p, str)]
                if row.total_steps and row.step != row.total_steps:
                    row.step = row.total_steps
                row.eta_s = 0.0
                s.add_all(artifacts)
                lifecycle.add_event(s, self.job.id, "stage_succeeded", f"stage {self.st.name} succeeded",
                                    self.lease.attempt, {"stage": self.st.name, "artifacts": len(artifacts)}, now)
            else:
                lifecycle.add_event(s, self.job.id, "stage_ended", f"stage {self.st.name} exited {code}",
                                    self.lease.attempt, {"stage": self.st.name, "exit_code": code}, now)

        while self._metrics_backlog() > METRICS_BLOCK:  # a flush reads one block: store the backlog first
            before = self.offset
            self.flush()
            if self.offset == before:  # a single line longer than a block: nothing more to take
                break
        self.flush(extra=record)
        if self.stop_reason == "cancelled":
            return Outcome("cancelled", reason="cancelled on request", exit_code=code)
        if result is not None:
            return Outcome("succeeded", exit_code=0)
        if self.stop_reason == "time_limit":
            return Outcome("failed", "user", f"time limit of {self.job.time_limit_s:g}s exceeded", code)
        if self.stop_reason == "shutdown":
            return Outcome("preempted", "preempted", f"worker {self.worker_id} shut down", code)
        if code == 0:
            return Outcome("failed", "infra", f"stage {self.st.name} {problem}", code)
        cls = EXIT_CLASS.get(code, "infra")
        return Outcome("preempted" if cls == "preempted" else "failed", cls, self._error_line(code), code)
