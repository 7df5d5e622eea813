"""Claiming a queued job, the worker's side of scheduling: the highest priority (then oldest) job this
worker fits (which jobs fit which workers is decided server-side, in service/services/placement.py).

PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent workers each take a different job
without waiting on each other. SQLite: the write transaction starts with BEGIN IMMEDIATE, which
already serialises claims. On both, the job moves queued -> running only through a
compare-and-set on its status, and the attempt gets a fresh lease token that fences every later
write of this worker."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from service.db import Database
from service.db.models import Job, Worker
from service.services import lifecycle
from service.services.placement import fit_clause


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt_id: str
    number: int
    token: str


def claim(db: Database, worker_id: str, devices: dict, launchers, lease_s: float) -> Claim | None:
    now = time.time()
    q = (select(Job.id).where(Job.status == "queued", fit_clause(devices, launchers))
         .order_by(Job.priority.desc(), Job.id).limit(1))
    if not db.is_sqlite:
        q = q.with_for_update(skip_locked=True)
    with db.write() as s:
        job_id = s.scalar(q)
        if job_id is None:
            return None
        attempt = lifecycle.current_attempt(s, job_id)
        if attempt is None or attempt.status != "queued":  # inconsistent row: leave it to an operator
            return None
        moved = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                          .values(status="running", pending_reason=None, updated_at=now)).rowcount
        if moved != 1:
            return None
        job = s.get(Job, job_id)
        if job.started_at is None:
            job.started_at = now
        token = secrets.token_hex(16)
        attempt.status, attempt.worker_id, attempt.lease_token = "running", worker_id, token
        attempt.lease_expires_at, attempt.started_at, attempt.heartbeat_at = now + lease_s, now, now
        lifecycle.add_event(s, job_id, "started", f"attempt {attempt.number} started on worker {worker_id}",
                            attempt.number, now=now)
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(status="busy", current_job_id=job_id, heartbeat_at=now))
        return Claim(job_id, attempt.id, attempt.number, token)
