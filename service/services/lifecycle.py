"""State transitions of jobs, attempts and stages, shared by the API, the workers and housekeeping.

Every function here runs inside the caller's write transaction, so a state change, its event and
its webhook outbox row commit together or not at all.

    job:      queued -> running -> succeeded | failed | cancelled      (running -> queued on restart)
    attempt:  queued -> running -> succeeded | failed | cancelled | lost
    stage:    pending -> running -> succeeded | failed | cancelled     (running -> pending on restart)
"""
from __future__ import annotations

import time
from contextvars import ContextVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Attempt, Event, Job, LogLine, Stage, WebhookDelivery, new_id

TERMINAL = ("succeeded", "failed", "cancelled")
RETRYABLE = ("infra", "preempted")  # user errors (bad config, time limit) are not retried
# the id of the API request being served (set by the access-log middleware; None in workers and housekeeping)
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def event_data(data: dict | None = None) -> dict | None:
    """An event's data, with the request id when an API request caused it (to find its access-log line)."""
    rid = REQUEST_ID.get()
    return {**(data or {}), "request_id": rid} if rid else data


def add_event(s: Session, job_id: str, type_: str, message: str, attempt: int | None = None,
              data: dict | None = None, now: float | None = None) -> None:
    s.add(Event(job_id=job_id, time=now or time.time(), type=type_, message=message, attempt=attempt,
                data=event_data(data)))


def system_log(s: Session, job_id: str, line: str, stage_id: str | None = None, attempt: int | None = None,
               now: float | None = None) -> None:
    """A line of the service's own in the job's log (stream `system`)."""
    s.add(LogLine(job_id=job_id, stage_id=stage_id, attempt=attempt, stream="system", time=now or time.time(),
                  line=line))


def new_attempt(s: Session, job: Job, number: int, now: float) -> Attempt:
    attempt = Attempt(id=new_id("a"), job_id=job.id, number=number, status="queued", created_at=now)
    s.add(attempt)
    return attempt


def webhook_payload(job: Job) -> dict:
    return {"job_id": job.id, "name": job.name, "status": job.status, "failure_class": job.failure_class,
            "failure_reason": job.failure_reason, "restarts": job.restarts, "finished_at": job.finished_at}


def finish_job(s: Session, job: Job, status: str, now: float, failure_class: str | None = None,
               reason: str | None = None, attempt: int | None = None) -> None:
    assert status in TERMINAL
    job.status, job.finished_at, job.updated_at = status, now, now
    job.pending_reason = None
    job.failure_class, job.failure_reason = failure_class, reason
    if status == "cancelled":
        s.execute(update(Stage).where(Stage.job_id == job.id, Stage.status.in_(("pending", "running")))
                  .values(status="cancelled"))
    elif status == "failed":
        s.execute(update(Stage).where(Stage.job_id == job.id, Stage.status == "running").values(status="failed"))
    msg = {"succeeded": "job succeeded", "cancelled": "job cancelled"}.get(status, f"job failed: {reason}")
    add_event(s, job.id, status, msg, attempt, {"failure_class": failure_class} if failure_class else None, now)
    if job.webhook_url:
        s.add(WebhookDelivery(id=new_id("w"), job_id=job.id, url=job.webhook_url, event=f"job.{status}",
                              payload=webhook_payload(job), status="pending", attempts=0, next_attempt_at=now,
                              created_at=now))


def end_attempt(s: Session, job: Job, attempt: Attempt, status: str, now: float, *, failure_class: str | None = None,
                reason: str | None = None, exit_code: int | None = None) -> None:
    """Close an attempt and move the job on: done, cancelled, restarted, or failed."""
    attempt.status, attempt.finished_at = status, now
    attempt.failure_class, attempt.failure_reason, attempt.exit_code = failure_class, reason, exit_code
    attempt.lease_token = None
    if status == "succeeded":
        finish_job(s, job, "succeeded", now, attempt=attempt.number)
    elif status == "cancelled" or job.cancel_requested:
        finish_job(s, job, "cancelled", now, attempt=attempt.number)
    elif failure_class in RETRYABLE and job.restarts < job.max_restarts:
        job.restarts += 1
        job.status, job.queued_at, job.updated_at = "queued", now, now
        job.pending_reason = f"restart {job.restarts}/{job.max_restarts} after {failure_class} failure: {reason}"
        s.execute(update(Stage).where(Stage.job_id == job.id, Stage.status == "running").values(status="pending"))
        nxt = new_attempt(s, job, attempt.number + 1, now)
        add_event(s, job.id, "requeued", f"attempt {attempt.number} ended ({failure_class}: {reason}); attempt "
                                        f"{nxt.number} queued, resuming from the last checkpoint",
                  attempt.number, {"failure_class": failure_class}, now)
    else:
        if failure_class in RETRYABLE:
            reason = f"{reason} (no restarts left: {job.restarts}/{job.max_restarts} used)"
        finish_job(s, job, "failed", now, failure_class, reason, attempt.number)


def current_attempt(s: Session, job_id: str) -> Attempt | None:
    return s.scalar(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number.desc()).limit(1))
