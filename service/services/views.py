"""Rows -> the response models of service/api/schemas.py, one model per resource. Routes return these
(FastAPI validates them against `response_model=`), and service/client.py parses answers into the same
models. A field a view leaves out (a stage's config in a list, a job's attempts where not read) is left
out of the answer too: routes serialize with `response_model_exclude_unset`."""
from __future__ import annotations

from service import recipe
from service.api import schemas
from service.db.models import ApiToken, Artifact, Attempt, Event, Job, LogLine, Stage, Worker


def stage_view(st: Stage, detail: bool) -> schemas.StageOut:
    out = {"id": st.id, "name": st.name, "kind": st.kind, "status": st.status, "step": st.step,
           "total_steps": st.total_steps, "eta_s": st.eta_s, "phase": st.phase, "exit_code": st.exit_code,
           "started_at": st.started_at, "finished_at": st.finished_at}
    if detail:
        out.update(run_dir=st.run_dir, launch_id=st.launch_id, summary=st.summary, config=st.config,
                   resolved_config=st.resolved_config, inputs=st.inputs)
    return schemas.StageOut(**out)


def attempt_view(a: Attempt) -> schemas.AttemptOut:
    return schemas.AttemptOut(
        number=a.number, status=a.status, worker_id=a.worker_id, stage=a.stage_name, exit_code=a.exit_code,
        failure_class=a.failure_class, failure_reason=a.failure_reason, created_at=a.created_at,
        started_at=a.started_at, heartbeat_at=a.heartbeat_at, lease_expires_at=a.lease_expires_at,
        finished_at=a.finished_at)


def job_view(job: Job, labels: dict, stages: list[Stage], attempts: list[Attempt] | None = None,
             detail: bool = False, devices: dict | None = None) -> schemas.JobOut:
    stages = sorted(stages, key=lambda st: st.position)
    current = next((st for st in stages if st.status == "running"), None) or \
        next((st for st in stages if st.status == "pending"), None)
    out = {
        "id": job.id, "name": job.name, "labels": labels, "status": job.status, "priority": job.priority,
        "resources": schemas.ResourcesOut(
            backend=job.backend, devices_per_node=job.devices_per_node, nodes=job.nodes, launcher=job.launcher,
            max_restarts=job.max_restarts, time_limit=job.time_limit_s, queue_time_limit=job.queue_time_limit_s,
            devices=devices),  # per stage: the accelerators it was given (devices_assigned)
        "pending_reason": job.pending_reason if job.status == "queued" else None,
        "failure_class": job.failure_class, "failure_reason": job.failure_reason,
        "cancel_requested": job.cancel_requested, "restarts": job.restarts,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "updated_at": job.updated_at,
        "current_stage": current.name if current else None,
        "step": current.step if current else None,
        "total_steps": current.total_steps if current else None,
        "eta_s": current.eta_s if current and current.status == "running" else None,
        "stages": [stage_view(st, detail) for st in stages],
    }
    if attempts is not None:
        out["attempts"] = [attempt_view(a) for a in sorted(attempts, key=lambda a: a.number)]
    if detail:
        out["webhook_url"] = job.webhook_url
        out["spec"] = job.spec
        out["comparison"] = recipe.comparison([{"name": st.name, "summary": st.summary} for st in stages])
    return schemas.JobOut(**out)


def event_view(e: Event) -> schemas.EventOut:
    return schemas.EventOut(id=e.id, time=e.time, type=e.type, message=e.message, attempt=e.attempt, data=e.data)


def log_line_view(line: LogLine, stage_name: str | None) -> schemas.LogLineOut:
    return schemas.LogLineOut(id=line.id, time=line.time, stage=stage_name, attempt=line.attempt,
                              stream=line.stream, line=line.line)


def artifact_view(a: Artifact, stage_name: str | None = None) -> schemas.ArtifactOut:
    return schemas.ArtifactOut(id=a.id, job_id=a.job_id, stage_id=a.stage_id, run_id=a.stage_id, stage=stage_name,
                               name=a.name, type=a.type, path=a.path, size_bytes=a.size_bytes,
                               created_at=a.created_at, download_url=f"/v1/artifacts/{a.id}/download")


def worker_view(w: Worker, alive: bool) -> schemas.WorkerOut:
    return schemas.WorkerOut(id=w.id, host=w.host, pid=w.pid, devices=w.devices, launchers=w.launchers,
                             status=w.status if alive or w.status == "stopped" else "lost",
                             current_job_id=w.current_job_id, started_at=w.started_at, heartbeat_at=w.heartbeat_at)


def token_view(t: ApiToken, token: str | None = None) -> schemas.TokenOut:
    """`token` (the secret) only in the answer that created it."""
    return schemas.TokenOut(id=t.id, name=t.name, scope=t.scope, created_at=t.created_at, revoked_at=t.revoked_at,
                            token=token)
