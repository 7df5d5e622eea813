"""Periodic upkeep, run by the API process and by every worker (each step is idempotent and uses
compare-and-set updates, so any number of processes may run it at once):

- expired leases: the attempt is `lost`, the job goes back to the queue (or fails when it has no
  restarts left, or ends cancelled when a cancel was pending);
- queue time limits: a job queued too long fails with the reason it was waiting for;
- pending reasons: every queued job says why it is waiting;
- webhooks due, idempotency keys past their time to live."""
from __future__ import annotations

import logging
import time

from sqlalchemy import bindparam, delete, func, select, update

from service.db import Database
from service.db.models import Attempt, IdempotencyKey, Job
from service.services import lifecycle, webhooks
from service.services.placement import alive_workers, wait_reason
from service.settings import Settings

log = logging.getLogger("tinyforge.housekeeping")


def expire_leases(db: Database, now: float | None = None) -> int:
    now = now or time.time()
    with db.read() as s:
        expired = list(s.execute(select(Attempt.id, Attempt.lease_token)
                                 .where(Attempt.status == "running", Attempt.lease_expires_at < now)).all())
    n = 0
    for attempt_id, token in expired:
        with db.write() as s:
            attempt = s.get(Attempt, attempt_id)
            if attempt is None or attempt.status != "running" or attempt.lease_token != token \
                    or (attempt.lease_expires_at or 0) >= now:
                continue  # renewed or finished meanwhile
            job = s.get(Job, attempt.job_id)
            lifecycle.system_log(s, job.id, f"attempt {attempt.number}: lease expired (worker {attempt.worker_id} "
                                            "stopped heartbeating)", attempt=attempt.number, now=now)
            lifecycle.end_attempt(s, job, attempt, "lost", now, failure_class="infra",
                                  reason=f"worker {attempt.worker_id} lost its lease")
            n += 1
    return n


def enforce_queue_limits(db: Database, now: float | None = None) -> int:
    now = now or time.time()
    with db.read() as s:
        late = list(s.scalars(select(Job.id).where(Job.status == "queued", Job.queue_time_limit_s.is_not(None))))
    n = 0
    for job_id in late:
        with db.write() as s:
            job = s.get(Job, job_id)
            if job is None or job.status != "queued" or job.queued_at + job.queue_time_limit_s > now:
                continue
            attempt = lifecycle.current_attempt(s, job_id)
            reason = f"queued longer than queue_time_limit ({job.queue_time_limit_s:g}s): {job.pending_reason}"
            if attempt is not None and attempt.status == "queued":
                attempt.status, attempt.finished_at = "failed", now
                attempt.failure_class, attempt.failure_reason = "user", reason
            lifecycle.finish_job(s, job, "failed", now, "user", reason, attempt.number if attempt else None)
            n += 1
    return n


_last_queue_state: dict[int, tuple] = {}


def refresh_pending_reasons(db: Database, worker_timeout_s: float, limit: int = 10_000) -> int:
    """Rewrite the reasons that changed. Skipped while neither the running workers nor the queue's
    membership changed (new jobs got their reason when submitted)."""
    with db.read() as s:
        workers = alive_workers(s, worker_timeout_s)
        count, newest = s.execute(select(func.count(), func.max(Job.updated_at)).where(Job.status == "queued")).one()
        state = (tuple(sorted((w.id, w.busy, tuple(sorted(w.devices.items()))) for w in workers)), count, newest)
        if _last_queue_state.get(id(db)) == state:
            return 0
        queued = list(s.execute(select(Job.id, Job.backend, Job.devices_per_node, Job.launcher, Job.pending_reason)
                                .where(Job.status == "queued").order_by(Job.priority.desc(), Job.id)
                                .limit(limit)).all())
    changes = []
    for ahead, (job_id, backend, dpn, launcher, old) in enumerate(queued):
        reason = wait_reason(backend, dpn, launcher, workers, ahead).text
        if old and old.startswith("restart "):  # keep saying why it is queued again
            reason = f"{old.split('; now: ')[0]}; now: {reason}"
        if reason != old:
            changes.append({"jid": job_id, "reason": reason})
    stmt = (update(Job.__table__).where(Job.id == bindparam("jid"), Job.status == "queued")
            .values(pending_reason=bindparam("reason")))
    for i in range(0, len(changes), 500):  # short transactions: submissions wait on the same lock
        with db.write() as s:
            s.connection().execute(stmt, changes[i:i + 500])
    _last_queue_state[id(db)] = state
    return len(changes)


def expire_idempotency_keys(db: Database, ttl_s: float) -> None:
    with db.write() as s:
        s.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < time.time() - ttl_s))


_last_key_expiry = [0.0]


def run_once(db: Database, settings: Settings, webhooks_too: bool = True) -> None:
    expire_keys = time.time() - _last_key_expiry[0] > 60
    if expire_keys:
        _last_key_expiry[0] = time.time()
    for step in (lambda: expire_leases(db), lambda: enforce_queue_limits(db),
                 lambda: refresh_pending_reasons(db, settings.worker_timeout_s),
                 lambda: expire_keys and expire_idempotency_keys(db, settings.idempotency_ttl_s),
                 db.checkpoint,
                 lambda: webhooks_too and webhooks.deliver_due(db, settings.secret(), settings.webhook_max_attempts)):
        try:
            step()
        except Exception:  # a database hiccup must not stop the loop; the next pass retries
            log.exception("housekeeping step failed")
