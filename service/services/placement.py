"""Placement, the server's side of scheduling: which jobs fit which workers, and the reason a queued job
is still waiting. The worker claims a job through fit_clause (service/worker/claiming.py).

A worker offers devices ({"cpu": n, "cuda": n, "npu": n}) and launchers. A `local` job fits a
worker with at least `devices_per_node` devices of its backend (`auto`: of any kind); a `slurm`
job fits any worker that offers the slurm launcher (Slurm places it)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import and_, false, or_, select

from service.db import Database
from service.db.models import Job, Worker

DEVICE_KINDS = ("npu", "cuda", "cpu")


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    devices: dict
    launchers: tuple
    busy: bool


def alive_workers(s, timeout_s: float, now: float | None = None) -> list[WorkerInfo]:
    now = now or time.time()
    rows = s.scalars(select(Worker).where(Worker.heartbeat_at > now - timeout_s, Worker.status != "stopped"))
    return [WorkerInfo(w.id, dict(w.devices or {}), tuple(w.launchers or ()), w.status == "busy") for w in rows]


def fits(backend: str, devices_per_node: int, launcher: str, w: WorkerInfo) -> bool:
    if launcher not in w.launchers:
        return False
    if launcher != "local":
        return True
    kinds = DEVICE_KINDS if backend == "auto" else (backend,)
    return any(int(w.devices.get(k, 0)) >= devices_per_node for k in kinds)


def fit_clause(devices: dict, launchers) -> object:
    """SQL condition: jobs this worker can run (used by the claim query)."""
    clauses = []
    if "local" in launchers:
        per_kind = [and_(Job.backend == k, Job.devices_per_node <= int(devices.get(k, 0))) for k in DEVICE_KINDS]
        most = max([int(devices.get(k, 0)) for k in DEVICE_KINDS] + [0])
        per_kind.append(and_(Job.backend == "auto", Job.devices_per_node <= most))
        clauses.append(and_(Job.launcher == "local", Job.nodes == 1, or_(*per_kind)))
    others = [name for name in launchers if name != "local"]
    if others:
        clauses.append(Job.launcher.in_(others))
    return or_(*clauses) if clauses else false()


class WaitReason(NamedTuple):
    """Why a queued job is not running: `code` for code to decide on, `text` for people."""
    code: str  # one of WAIT_CODES
    text: str

    @property
    def schedulable(self) -> bool:
        """A running worker can take the job (now, or once it is free)."""
        return self.code in ("idle", "busy")


# no_worker: none running; no_launcher: none offers the job's launcher; no_device: none has enough devices;
# idle: an idle fitting worker will claim it; busy: every fitting worker is busy
WAIT_CODES = ("no_worker", "no_launcher", "no_device", "idle", "busy")


def wait_reason(backend: str, devices_per_node: int, launcher: str, workers: list[WorkerInfo],
                ahead: int | None = None) -> WaitReason:
    """Why a job with these requirements is not running yet (the text is never empty)."""
    if not workers:
        return WaitReason("no_worker", "no worker is running: start `tinyforge worker` (or `tinyforge serve`, "
                                       "which embeds one)")
    if not any(launcher in w.launchers for w in workers):
        offered = sorted({name for w in workers for name in w.launchers})
        return WaitReason("no_launcher", f"asks for launcher {launcher}; running workers offer only: "
                                         f"{', '.join(offered)}")
    fitting = [w for w in workers if fits(backend, devices_per_node, launcher, w)]
    if not fitting:
        kinds = DEVICE_KINDS if backend == "auto" else (backend,)
        best = max((int(w.devices.get(k, 0)), k) for w in workers for k in kinds)
        what = "devices" if backend == "auto" else f"{backend} devices"
        has = f"{best[0]} {best[1]}" if best[0] else f"no {' or '.join(kinds)}"
        return WaitReason("no_device", f"asks for {devices_per_node} {what} per node; the largest running worker "
                                       f"has {has}")
    idle = [w for w in fitting if not w.busy]
    queue = f"; {ahead} job(s) ahead in the queue" if ahead else ""
    if idle:
        return WaitReason("idle", f"waiting to be claimed by one of {len(idle)} idle fitting worker(s){queue}")
    return WaitReason("busy", f"waiting for a free worker: all {len(fitting)} fitting worker(s) are busy{queue}")


class WorkerSnapshot:
    """The running workers, re-read at most once a second (submissions compute a pending reason)."""

    def __init__(self, db: Database, timeout_s: float, max_age_s: float = 1.0):
        self.db, self.timeout_s, self.max_age_s = db, timeout_s, max_age_s
        self._at, self._workers = 0.0, []
        self._lock = threading.Lock()

    def get(self) -> list[WorkerInfo]:
        now = time.monotonic()
        if now - self._at > self.max_age_s:
            with self._lock:
                if now - self._at > self.max_age_s:
                    with self.db.read() as s:
                        self._workers = alive_workers(s, self.timeout_s)
                    self._at = now
        return self._workers
