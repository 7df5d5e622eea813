"""Running one claimed attempt: its stages in order, each an engine subprocess (docs/engine-contract.md).

While a stage runs, the runner streams its output lines into `log_lines`, tails metrics.jsonl into
`metric_points` (the byte offset is committed with the points, so a resumed stage neither loses nor
repeats one), copies progress.json into the stage row, and extends its lease -- all in one
transaction per heartbeat that first checks the lease token (`_fenced`). A runner that lost its
lease stops its process and writes nothing more. Cancel: SIGTERM, then SIGKILL after the grace
period."""
from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from service import refs
from service.db import Database
from service.db.models import Artifact, Attempt, Job, LogLine, MetricPoint, Stage, new_id
from service.services import lifecycle
from service.settings import Settings
from service.spec import STAGE_COMMANDS
from service.worker.launchers import LaunchRequest, load_launcher
from service.worker.scheduler import Claim

log = logging.getLogger("tinyforge.worker")
MAX_LINE = 16_384
EXIT_CLASS = {2: "user", 3: "infra", 143: "preempted"}  # anything else: infra


class LeaseLost(Exception):
    pass


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


def _finite(value):
    """NaN/infinity (json.loads accepts them) become None: JSON columns and responses refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class AttemptRunner:
    def __init__(self, db: Database, settings: Settings, worker_id: str, claim: Claim, stop: threading.Event):
        self.db, self.settings, self.worker_id, self.claim, self.stop = db, settings, worker_id, claim, stop
        self.last_ok = time.time()  # last time the lease was extended

    # ------------------------------------------------------------ fencing

    def _fenced(self, s, now: float) -> None:
        moved = s.execute(update(Attempt).where(Attempt.id == self.claim.attempt_id,
                                                Attempt.lease_token == self.claim.token,
                                                Attempt.status == "running")
                          .values(lease_expires_at=now + self.settings.lease_s, heartbeat_at=now)).rowcount
        if moved != 1:
            raise LeaseLost(f"attempt {self.claim.number} of job {self.claim.job_id} lost its lease")

    @contextlib.contextmanager
    def write(self):
        now = time.time()
        with self.db.write() as s:
            self._fenced(s, now)
            yield s
        self.last_ok = now

    def _retrying(self, fn):
        """Run a fenced write, retrying through database outages until the lease would have expired."""
        while True:
            try:
                return fn()
            except LeaseLost:
                raise
            except SQLAlchemyError as exc:
                if time.time() - self.last_ok > self.settings.lease_s:
                    raise LeaseLost(f"database unreachable for longer than the lease: {exc}") from None
                log.warning("database write failed, retrying: %s", exc)
                time.sleep(min(1.0, self.settings.heartbeat_s))

    # ------------------------------------------------------------ attempt

    def run(self) -> str:
        try:
            with self.db.read() as s:
                job = s.get(Job, self.claim.job_id)
                stages = list(s.scalars(select(Stage).where(Stage.job_id == job.id).order_by(Stage.position)))
            outcome = Outcome("succeeded")
            for st in stages:
                if st.status == "succeeded":
                    continue
                if self.stop.is_set():  # between stages: hand the rest to another worker
                    outcome = Outcome("preempted", "preempted", f"worker {self.worker_id} shut down")
                    break
                outcome = self.run_stage(job, st, stages)
                if outcome.status != "succeeded":
                    break
            if outcome.status != "lost":
                self._retrying(lambda: self._finish(outcome))
            return outcome.status
        except LeaseLost as exc:
            log.warning("%s; stopping", exc)
            return "lost"

    def _finish(self, o: Outcome) -> None:
        with self.write() as s:
            job, attempt = s.get(Job, self.claim.job_id), s.get(Attempt, self.claim.attempt_id)
            status = {"succeeded": "succeeded", "cancelled": "cancelled",
                      "preempted": "preempted"}.get(o.status, "failed")
            lifecycle.end_attempt(s, job, attempt, status, time.time(), failure_class=o.failure_class,
                                  reason=o.reason, exit_code=o.exit_code)

    # ------------------------------------------------------------ one stage

    def resolve(self, st: Stage, stages: list[Stage]) -> tuple[dict, list[dict]]:
        earlier = {x.name: x for x in stages if x.position < st.position}
        with self.db.read() as s:
            fresh = {x.id: x for x in s.scalars(select(Stage).where(Stage.id.in_([x.id for x in earlier.values()])))}
            arts: dict[str, list[Artifact]] = collections.defaultdict(list)
            for a in s.scalars(select(Artifact).where(Artifact.stage_id.in_(list(fresh)))
                               .order_by(Artifact.created_at, Artifact.id)):
                arts[a.stage_id].append(a)
        inputs: list[dict] = []

        def lookup(ref: refs.Ref, key: str = ""):
            src = fresh.get(earlier[ref.stage].id) if ref.stage in earlier else None
            if src is None or src.status != "succeeded":
                raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage} has not succeeded")
            if ref.what == "run_dir":
                value = src.run_dir
            elif ref.what == "summary":
                value = src.summary or {}
                for part in ref.key.split("."):
                    if not isinstance(value, dict) or part not in value:
                        raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage}'s summary has no {ref.key}")
                    value = value[part]
            else:
                mine = arts[src.id]
                hit = [a for a in mine if a.name == ref.key] or [a for a in mine if a.type == ref.key]
                if not hit:
                    have = ", ".join(f"{a.name} ({a.type})" for a in mine) or "none"
                    raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage} recorded no artifact named or "
                                            f"typed {ref.key!r}; it recorded: {have}")
                value = hit[-1].path
            inputs.append({"ref": ref.text, "key": key, "run_id": src.id,
                           "artifact": ref.key if ref.what == "artifacts" else None,
                           "path": value if ref.what != "summary" else None})
            return value

        resolved = {}
        for k, v in st.config.items():
            resolved[k] = refs.substitute(v, lambda r, _k=k: lookup(r, self._key_of(st.config[_k], r, _k)))
        return resolved, inputs

    @staticmethod
    def _key_of(value, ref: refs.Ref, top: str) -> str:
        for loc, r in refs.find({top: value}):
            if r.text == ref.text:
                return ".".join(map(str, loc))
        return top

    def _lock_run_dir(self, run_dir: Path, st: Stage) -> int | None:
        """Hold run_dir/.lock for the stage's lifetime; the child inherits it, so a process left over from
        an earlier attempt (its worker killed) keeps the directory until it has exited."""
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.time() + self.settings.cancel_grace_s + self.settings.lease_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            if time.time() > deadline:
                os.close(fd)
                return None
            with self.write() as s:  # keep the lease while waiting
                if not said:
                    lifecycle.system_log(s, st.job_id, f"stage {st.name}: waiting for a process of an earlier "
                                                       "attempt to release the run directory", st.id,
                                         self.claim.number)
                    said = True
            time.sleep(max(0.2, min(1.0, self.settings.heartbeat_s)))

    def run_stage(self, job: Job, st: Stage, stages: list[Stage]) -> Outcome:
        run_dir = Path(st.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            config, inputs = self.resolve(st, stages)
        except refs.RefError as exc:
            reason = f"stage {st.name}: {exc.msg}"
            with self.write() as s:
                s.execute(update(Stage).where(Stage.id == st.id).values(status="failed"))
                lifecycle.system_log(s, job.id, reason, st.id, self.claim.number)
            return Outcome("failed", "user", reason)
        config_path = run_dir / "stage.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        lock_fd = self._lock_run_dir(run_dir, st)
        if lock_fd is None:
            return Outcome("failed", "infra", f"stage {st.name}: run directory still locked by an earlier attempt")
        try:
            return self._run_locked(job, st, run_dir, config_path, config, inputs, lock_fd)
        finally:
            os.close(lock_fd)

    def _run_locked(self, job, st, run_dir, config_path, config, inputs, lock_fd) -> Outcome:
        argv = [*self.settings.engine_command, STAGE_COMMANDS.get(st.kind, st.kind), "--config", str(config_path),
                "--out", str(run_dir)]
        env = {**os.environ, "TINYFORGE_HOME": str(self.settings.home), "TINYFORGE_JOB_ID": job.id,
               "TINYFORGE_RUN_ID": st.id, "TINYFORGE_ATTEMPT": str(self.claim.number), "PYTHONUNBUFFERED": "1"}
        launcher_cls = load_launcher(job.launcher)
        if launcher_cls is None:
            return Outcome("failed", "infra", f"launcher {job.launcher} is not available on worker {self.worker_id}")
        spec_resources = (job.spec or {}).get("resources", {})
        req = LaunchRequest(argv=argv, run_dir=run_dir, env=env, job_id=job.id, stage=st.name, backend=job.backend,
                            processes_per_node=job.devices_per_node if st.kind in ("train", "rounds", "inherit") else 1,
                            nodes=job.nodes, time_limit_s=job.time_limit_s, pass_fds=(lock_fd,),
                            options=spec_resources.get(job.launcher) or {},
                            output_stem=f"logs/attempt-{self.claim.number}")
        now = time.time()
        with self.write() as s:
            if s.scalar(select(Job.cancel_requested).where(Job.id == job.id)):
                return Outcome("cancelled", reason="cancelled on request")
            row = s.get(Stage, st.id)
            row.status, row.started_at = "running", row.started_at or now
            row.resolved_config, row.inputs, row.exit_code, row.finished_at = config, inputs, None, None
            s.execute(update(Attempt).where(Attempt.id == self.claim.attempt_id).values(stage_name=st.name))
            lifecycle.add_event(s, job.id, "stage_started", f"stage {st.name} ({st.kind}) started",
                                self.claim.number, {"stage": st.name}, now)
            metrics_offset = row.metrics_offset
            last_steps = {(k, sp): m for k, sp, m in s.execute(
                select(MetricPoint.key, MetricPoint.split, func.max(MetricPoint.step))
                .where(MetricPoint.stage_id == st.id).group_by(MetricPoint.key, MetricPoint.split)).all()}
        try:
            proc = launcher_cls().start(req)
        except OSError as exc:
            return Outcome("failed", "infra", f"stage {st.name}: could not start {argv[0]}: {exc}")
        try:
            with self.write() as s:
                s.execute(update(Stage).where(Stage.id == st.id).values(launch_id=proc.id))
        except LeaseLost:
            proc.terminate()  # the monitor's first flush sees the lost lease and finishes stopping it
        return _Monitor(self, job, st, run_dir, proc, metrics_offset, last_steps).run()


class _Monitor:
    """Watches one running stage process until it exits (or must be stopped)."""

    def __init__(self, runner: AttemptRunner, job: Job, st: Stage, run_dir: Path, proc, metrics_offset: int,
                 last_steps: dict):
        self.r, self.job, self.st, self.run_dir, self.proc = runner, job, st, run_dir, proc
        self.offset = metrics_offset
        self.lines: list[tuple[str, float, str]] = []
        self.last_steps = last_steps  # (key, split) -> highest step stored
        self.lines.append(("system", time.time(), f"attempt {runner.claim.number}, stage {st.name}: $ {shlex.join(proc.command)}"))
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
            data = f.read(8 << 20)
        end = data.rfind(b"\n") + 1  # complete lines only
        points = []
        for raw in data[:end].splitlines():
            try:
                obj = json.loads(raw)
                step = int(obj["step"])
            except (ValueError, KeyError, TypeError):
                continue
            split = str(obj.get("split", "train"))[:32]
            t = obj.get("time") if isinstance(obj.get("time"), (int, float)) else None
            for key, value in obj.items():
                if key in ("step", "split", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    points.append({"job_id": self.job.id, "stage_id": self.st.id, "split": split, "key": key[:64],
                                   "step": step, "value": float(value), "time": t})
        return points, self.offset + end

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
        lines = [{"job_id": self.job.id, "stage_id": self.st.id, "attempt": self.r.claim.number, "stream": stream,
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
        with self.r.write() as s:
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
        settings = self.r.settings
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
                    if now - self.r.last_ok > settings.lease_s:
                        lost = True
                        self._stop("lost")
            if self.job.time_limit_s and self.job.started_at and now - self.job.started_at > self.job.time_limit_s:
                self._stop("time_limit")
            if self.r.stop.is_set():
                self._stop("shutdown")
            if self.term_at and not self.killed and now - self.term_at > settings.cancel_grace_s:
                self.proc.kill()
                self.killed = True
                self.lines.append(("system", now, f"no exit {settings.cancel_grace_s:g}s after SIGTERM: sent SIGKILL"))
            time.sleep(0.05)
        if lost:
            return Outcome("lost")
        return self.r._retrying(lambda: self._record_exit(rc))

    def _take_lines(self, final: bool = False) -> None:
        for item in (self.proc.drain_final() if final else self.proc.drain()):
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
                                    self.r.claim.number, {"stage": self.st.name, "artifacts": len(artifacts)}, now)
            else:
                lifecycle.add_event(s, self.job.id, "stage_ended", f"stage {self.st.name} exited {code}",
                                    self.r.claim.number, {"stage": self.st.name, "exit_code": code}, now)

        self.flush(extra=record)
        if self.stop_reason == "cancelled":
            return Outcome("cancelled", reason="cancelled on request", exit_code=code)
        if result is not None:
            return Outcome("succeeded", exit_code=0)
        if self.stop_reason == "time_limit":
            return Outcome("failed", "user", f"time limit of {self.job.time_limit_s:g}s exceeded", code)
        if self.stop_reason == "shutdown":
            return Outcome("preempted", "preempted", f"worker {self.r.worker_id} shut down", code)
        if code == 0:
            return Outcome("failed", "infra", f"stage {self.st.name} {problem}", code)
        cls = EXIT_CLASS.get(code, "infra")
        return Outcome("preempted" if cls == "preempted" else "failed", cls, self._error_line(code), code)
