"""Job logs: every stdout/stderr line of every stage, plus the service's own `system` lines, in the
database in arrival order. A line's id is its server-sent-event id, so a client resumes with
Last-Event-ID and misses nothing."""
from __future__ import annotations

from sqlalchemy import select

from service.db import Database
from service.db.models import Job, LogLine, Stage
from service.api.schemas import LogLineOut
from service.services.jobs import NotFound
from service.services.views import log_line_view


def read(db: Database, job_id: str, after: int = 0, limit: int = 1000, stage: str | None = None,
         stream: str | None = None) -> tuple[list[LogLineOut], str]:
    """(lines after id `after`, the job's status) -- status tells a follower when to stop."""
    with db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        names = {st.id: st.name for st in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        q = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > after).order_by(LogLine.id).limit(limit)
        if stage:
            ids = [i for i, n in names.items() if n == stage]
            q = q.where(LogLine.stage_id.in_(ids))
        if stream:
            q = q.where(LogLine.stream == stream)
        rows = list(s.scalars(q))
        status = job.status
    return [log_line_view(r, names.get(r.stage_id)) for r in rows], status
