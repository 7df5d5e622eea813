"""Jobs: submit (with idempotency), plan, list, show, cancel, retry, events."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select, update

from service import planning
from service.body import SpecError, request_hash
from service.jobspec import STAGE_COMMANDS, validate_spec
from service.api import schemas
from service.db import Database
from service.db.models import Attempt, Event, IdempotencyKey, Job, JobLabel, Stage, new_id
from service.services import lifecycle
from service.services.group_commit import KeyConflict, Submission, committer
from service.services.placement import WorkerSnapshot, wait_reason
from service.services.views import event_view, job_view
from service.settings import Settings


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def _plan(settings: Settings, data) -> planning.Plan:
    return planning.plan(validate_spec(data), registry=settings.stage_specs, roots=settings.roots)


def plan(settings: Settings, workers: WorkerSnapshot, data) -> schemas.PlanOut:
    """Validate and expand without storing anything; say whether a running worker fits."""
    p = _plan(settings, data)
    r = p.spec.resources
    reason = wait_reason(r.backend, r.devices_per_node, r.launcher, workers.get())
    stages = [schemas.PlannedStageOut(name=st.name, kind=st.kind, command=STAGE_COMMANDS.get(st.kind, st.kind),
                                      config=st.config, references=st.references, validated_by=st.validated_by)
              for st in p.stages]
    return schemas.PlanOut(name=p.spec.name, stages=stages, resources=r.model_dump(mode="json"),
                           schedulable=reason.schedulable, reason=None if reason.schedulable else reason.text,
                           reason_code=reason.code)


_IDEM = IdempotencyKey.__table__.c
_KEY_LOOKUP = select(_IDEM.request_hash, _IDEM.job_id)


def _existing(conn, key: str, digest: str) -> str:
    row = conn.execute(_KEY_LOOKUP.where(_IDEM.key == key)).first()
    if row is None:
        return ""
    if row.request_hash != digest:
        raise Conflict(f"Idempotency-Key {key!r} was already used with a different body (job {row.job_id})")
    return row.job_id


def submit(db: Database, settings: Settings, workers: WorkerSnapshot, data, idempotency_key: str | None,
           token_id: str | None) -> tuple[schemas.JobOut, bool]:
    """Returns (job, created). A repeated key with the same body returns the original job; with another
    body it raises Conflict. The job, its stages, its first attempt, its first event and the key commit
    in one transaction (batched with concurrent submissions: services/group_commit.py)."""
    digest = request_hash(data)
    try:
        p = _plan(settings, data)
    except SpecError:
        # a repeat answers with the original job even if the body no longer validates (a path since gone)
        if idempotency_key:
            with db.engine.connect() as conn:
                job_id = _existing(conn, idempotency_key, digest)
            if job_id:
                return get(db, job_id), False
        raise
    r = p.spec.resources
    now = time.time()
    job_id = new_id("j")
    job = dict(id=job_id, name=p.spec.name, spec=p.spec.model_dump(mode="json", exclude_none=True),
               status="queued", priority=r.priority, backend=r.backend, devices_per_node=r.devices_per_node,
               nodes=r.nodes, launcher=r.launcher, max_restarts=r.max_restarts, restarts=0,
               time_limit_s=r.time_limit, queue_time_limit_s=r.queue_time_limit,
               webhook_url=p.spec.webhook.url if p.spec.webhook else None, pending_reason=wait_reason(
                   r.backend, r.devices_per_node, r.launcher, workers.get()).text, failure_class=None,
               failure_reason=None, cancel_requested=False, token_id=token_id, created_at=now, queued_at=now,
               started_at=None, finished_at=None, updated_at=now)
    run_root = Path(settings.runs_dir) / job_id
    stages = [dict(id=new_id("r"), job_id=job_id, position=i, name=st.name, kind=st.kind, config=st.config,
                   resolved_config=None, status="pending", run_dir=str(run_root / f"{i:02d}-{st.name}"), step=None,
                   total_steps=None, eta_s=None, phase=None, metrics_offset=0, summary=None, inputs=None,
                   exit_code=None, launch_id=None, started_at=None, finished_at=None)
              for i, st in enumerate(p.stages)]
    attempt = dict(id=new_id("a"), job_id=job_id, number=1, status="queued", worker_id=None, lease_token=None,
                   lease_expires_at=None, stage_name=None, exit_code=None, failure_class=None, failure_reason=None,
                   created_at=now, started_at=None, heartbeat_at=None, finished_at=None)
    sub = Submission(job, stages, [{"job_id": job_id, "key": k, "value": v} for k, v in p.spec.labels.items()],
                     attempt, {"job_id": job_id, "time": now, "type": "submitted", "attempt": None,
                               "data": lifecycle.event_data(),
                               "message": f"submitted with {len(stages)} stage(s)"}, idempotency_key, digest)
    try:
        outcome, written_id = committer(db).write(sub)
    except KeyConflict as exc:
        raise Conflict(str(exc)) from None
    if outcome == "existing":  # a concurrent twin with the same key won
        return get(db, written_id), False
    ns = SimpleNamespace
    return job_view(ns(**job), p.spec.labels, [ns(**x) for x in stages], [ns(**attempt)]), True


def _rows(s, stmt) -> list:
    return list(s.execute(stmt).all())


def get(db: Database, job_id: str, detail: bool = True) -> schemas.JobOut:
    with db.read() as s:
        job = s.execute(select(Job.__table__).where(Job.id == job_id)).first()
        if job is None:
            raise NotFound(f"job {job_id} not found")
        stages = _rows(s, select(Stage.__table__).where(Stage.job_id == job_id))
        attempts = _rows(s, select(Attempt.__table__).where(Attempt.job_id == job_id))
        labels = dict(_rows(s, select(JobLabel.key, JobLabel.value).where(JobLabel.job_id == job_id)))
        assigned = s.scalars(select(Event.data).where(Event.job_id == job_id, Event.type == "devices_assigned")
                             .order_by(Event.id)).all()
    devices = {d["stage"]: {k: d[k] for k in ("kind", "ids", "env", "worker")} for d in assigned if d}
    return job_view(job, labels, stages, attempts, detail=detail, devices=devices or None)


def list_jobs(db: Database, status: list[str] | None = None, name: str | None = None,
              labels: list[tuple[str, str | None]] = (), limit: int = 50,
              cursor: str | None = None) -> schemas.JobListOut:
    """Newest first. `cursor` is the last id of the previous page; `name` may use * as a wildcard."""
    q = select(*[c for c in Job.__table__.c if c.name != "spec"]).order_by(Job.id.desc()).limit(limit + 1)
    if status:
        q = q.where(Job.status.in_(status))
    if name:
        q = q.where(Job.name.like(name.replace("%", r"\%").replace("_", r"\_").replace("*", "%"), escape="\\")
                    if "*" in name else Job.name == name)
    for key, value in labels:
        sub = select(JobLabel.job_id).where(JobLabel.key == key)
        if value is not None:
            sub = sub.where(JobLabel.value == value)
        q = q.where(Job.id.in_(sub))
    if cursor:
        q = q.where(Job.id < cursor)
    with db.read() as s:
        jobs = _rows(s, q)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        ids = [j.id for j in jobs]
        stages: dict[str, list] = {i: [] for i in ids}
        labels_of: dict[str, dict] = {i: {} for i in ids}
        if ids:
            cols = [c for c in Stage.__table__.c if c.name not in ("config", "resolved_config", "inputs", "summary")]
            for st in s.execute(select(*cols).where(Stage.job_id.in_(ids))):
                stages[st.job_id].append(st)
            for lb in s.execute(select(JobLabel.job_id, JobLabel.key, JobLabel.value).where(JobLabel.job_id.in_(ids))):
                labels_of[lb.job_id][lb.key] = lb.value
    return schemas.JobListOut(items=[job_view(j, labels_of[j.id], stages[j.id]) for j in jobs],
                              next_cursor=jobs[-1].id if more and jobs else None)


def cancel(db: Database, job_id: str) -> schemas.JobOut:
    """A queued job is cancelled at once; a running one is asked to stop (the worker sends SIGTERM, then
    SIGKILL after the grace period) and ends `cancelled`; one that already ended is left as it is."""
    now = time.time()
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status in lifecycle.TERMINAL:
            pass  # already ended: answered as it is, so a retried cancel is safe
        elif job.status == "queued":
            attempt = lifecycle.current_attempt(s, job_id)
            if attempt is not None and attempt.status == "queued":
                attempt.status, attempt.finished_at = "cancelled", now
            lifecycle.finish_job(s, job, "cancelled", now, attempt=attempt.number if attempt else None)
        elif not job.cancel_requested:
            job.cancel_requested, job.updated_at = True, now
            lifecycle.add_event(s, job_id, "cancel_requested", "cancel requested; stopping the running stage",
                                now=now)
    return get(db, job_id)


def retry(db: Database, job_id: str) -> schemas.JobOut:
    """Run a failed or cancelled job again as a new attempt; finished stages are kept, the others resume."""
    now = time.time()
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status not in ("failed", "cancelled"):
            raise Conflict(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
        last = lifecycle.current_attempt(s, job_id)
        job.status, job.queued_at, job.updated_at, job.finished_at = "queued", now, now, None
        job.cancel_requested, job.failure_class, job.failure_reason = False, None, None
        job.pending_reason = "retry requested; waiting for a worker"
        s.execute(update(Stage).where(Stage.job_id == job_id, Stage.status != "succeeded").values(status="pending"))
        attempt = lifecycle.new_attempt(s, job, (last.number if last else 0) + 1, now)
        lifecycle.add_event(s, job_id, "retried", f"retry requested: attempt {attempt.number} queued", now=now)
    return get(db, job_id)


def events(db: Database, job_id: str, after: int = 0, limit: int = 1000) -> list[schemas.EventOut]:
    with db.read() as s:
        if s.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} not found")
        rows = s.scalars(select(Event).where(Event.job_id == job_id, Event.id > after).order_by(Event.id)
                         .limit(limit))
        return [event_view(e) for e in rows]
