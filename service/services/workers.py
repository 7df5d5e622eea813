"""Worker registry: what each worker offers, and whether it is alive (heartbeats)."""
from __future__ import annotations

import time

from sqlalchemy import select, update

from service.api.schemas import WorkerOut
from service.db import Database
from service.db.models import Worker
from service.services.views import worker_view


def register(db: Database, worker_id: str, host: str, pid: int, devices: dict, launchers: list[str]) -> None:
    now = time.time()
    with db.write() as s:
        row = s.get(Worker, worker_id)
        if row is None:
            s.add(Worker(id=worker_id, host=host, pid=pid, devices=devices, launchers=launchers, status="idle",
                         started_at=now, heartbeat_at=now))
        else:
            row.host, row.pid, row.devices, row.launchers = host, pid, devices, launchers
            row.status, row.current_job_id, row.started_at, row.heartbeat_at = "idle", None, now, now


def heartbeat(db: Database, worker_id: str, status: str | None = None, job_id: str | None = None,
              set_job: bool = False) -> None:
    values: dict = {"heartbeat_at": time.time()}
    if status:
        values["status"] = status
    if set_job:
        values["current_job_id"] = job_id
    with db.write() as s:
        s.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def list_workers(db: Database, timeout_s: float) -> list[WorkerOut]:
    now = time.time()
    with db.read() as s:
        rows = list(s.scalars(select(Worker).order_by(Worker.started_at.desc())))
    return [worker_view(w, w.heartbeat_at > now - timeout_s) for w in rows]
