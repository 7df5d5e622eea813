"""/v1/jobs: submit, plan, list, show, cancel, retry, events, logs (SSE), metrics, artifacts. Every route
returns the response model it declares (built by services/views.py); optional parts a view leaves out
(a listed stage's config, ...) stay out of the answer (response_model_exclude_unset)."""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api import schemas
from service.api.deps import AUTH_ERRORS, BODY_ERRORS as BAD_BODY, CONFLICT, NOT_FOUND, READ, SUBMIT, require
from service.auth import Principal
from service.services import artifacts, jobs, lifecycle, logs, metrics
from service.body import SpecError, parse_body

router = APIRouter(prefix="/v1", tags=["jobs"])
SHAPE = {"response_model_exclude_unset": True}  # answer only what the view filled in

ERRORS = AUTH_ERRORS
MAX_LABEL_FILTERS = 50  # = the most labels a job may have
MAX_ID = 2**62  # ids and cursors fit a signed 64-bit column
BODY_ERRORS = {**ERRORS, **BAD_BODY}
MISSING = {**ERRORS, **NOT_FOUND}
# the body is read by hand (JSON or YAML), so describe it for the OpenAPI spec
SPEC_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},  # added by app.openapi
    "application/yaml": {"schema": {"type": "string", "description": "the same spec as YAML"}}}}}


async def _body(request: Request):
    return parse_body(await request.body(), request.headers.get("content-type"))


@router.post("/jobs", status_code=201, response_model=schemas.JobOut, **SHAPE, openapi_extra=SPEC_BODY,
             responses={**BODY_ERRORS, 200: {"model": schemas.JobOut, "description": "repeat of an earlier "
                                             "request with the same Idempotency-Key and body"},
                        **CONFLICT})
async def submit_job(request: Request, response: Response,
                     idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=255,
                                                          pattern=r"^[^\x00-\x1f\x7f]+$"),
                     principal: Principal = Depends(require("submit"))):
    """Submit a job (JSON, or YAML with Content-Type application/yaml). With an Idempotency-Key, a
    repeat with the same body returns the original job (200) and another body is refused (409)."""
    data = await _body(request)
    st = request.app.state
    job, created = await run_in_threadpool(jobs.submit, st.db, st.settings, st.workers, data, idempotency_key,
                                           principal.token_id)
    response.status_code = 201 if created else 200
    return job


@router.post("/jobs:plan", response_model=schemas.PlanOut, **SHAPE, openapi_extra=SPEC_BODY, responses=BODY_ERRORS,
             dependencies=[SUBMIT])
async def plan_job(request: Request):
    """Validate a spec and show its expanded stages and whether a running worker can take it; stores nothing."""
    data = await _body(request)
    st = request.app.state
    return await run_in_threadpool(jobs.plan, st.settings, st.workers, data)


@router.get("/jobs", response_model=schemas.JobListOut, **SHAPE, responses=ERRORS, dependencies=[READ])
def list_jobs(request: Request,
              status: str | None = Query(None, description="comma-separated statuses", max_length=200,
                                         pattern=r"^(queued|running|succeeded|failed|cancelled)"
                                                 r"(,(queued|running|succeeded|failed|cancelled))*$"),
              name: str | None = Query(None, max_length=200, description="exact name, or a pattern with *"),
              label: list[str] = Query([], description="key or key=value; repeat to require several (at most 50)"),
              limit: int = Query(50, ge=1, le=500),
              cursor: str | None = Query(None, max_length=64, description="next_cursor of the previous page")):
    if len(label) > MAX_LABEL_FILTERS:  # each is a subquery: thousands would exceed the database's expression limits
        raise SpecError([{"loc": ["query", "label"], "msg": f"at most {MAX_LABEL_FILTERS} label filters, got "
                                                           f"{len(label)}", "type": "too_long"}])
    labels = []
    for item in label:
        key, sep, value = item.partition("=")
        if not key:
            raise SpecError([{"loc": ["query", "label"], "msg": f"expected key or key=value, got {item!r}",
                              "type": "value_error"}])
        labels.append((key, value if sep else None))
    return jobs.list_jobs(request.app.state.db, status.split(",") if status else None, name, labels, limit, cursor)


@router.get("/jobs/{job_id}", response_model=schemas.JobOut, **SHAPE, responses=MISSING, dependencies=[READ])
def get_job(request: Request, job_id: str):
    """A job with its stages (step, ETA), attempts and, while queued, why it is waiting."""
    return jobs.get(request.app.state.db, job_id)


# custom methods in one style (Google AIP-136): POST /v1/jobs:plan, /v1/jobs/{id}:cancel, /v1/jobs/{id}:retry
@router.post("/jobs/{job_id}:cancel", response_model=schemas.JobOut, **SHAPE, dependencies=[SUBMIT],
             responses=MISSING)
def cancel_job(request: Request, job_id: str):
    """Cancel a job. Idempotent: a job that already ended is answered as it is (200), so a retried
    cancel is safe."""
    return jobs.cancel(request.app.state.db, job_id)


@router.post("/jobs/{job_id}:retry", response_model=schemas.JobOut, **SHAPE, dependencies=[SUBMIT],
             responses={**MISSING, **CONFLICT})
def retry_job(request: Request, job_id: str):
    return jobs.retry(request.app.state.db, job_id)


@router.get("/jobs/{job_id}/events", response_model=list[schemas.EventOut], dependencies=[READ],
            responses=MISSING)
def job_events(request: Request, job_id: str, after: int = Query(0, ge=0, le=MAX_ID),
               limit: int = Query(1000, ge=1, le=10000)):
    return jobs.events(request.app.state.db, job_id, after, limit)


@router.get("/jobs/{job_id}/logs", response_model=schemas.LogsOut, dependencies=[READ],
            responses={**MISSING,
                       200: {"model": schemas.LogsOut, "content": {"text/event-stream": {}},
                             "description": "JSON, or server-sent events with follow=true or "
                                            "Accept: text/event-stream"}})
async def job_logs(request: Request, job_id: str, follow: bool = False, after: int = Query(0, ge=0, le=MAX_ID),
                   stage: str | None = Query(None, max_length=64),
                   stream: str | None = Query(None, pattern="^(stdout|stderr|system)$"),
                   limit: int = Query(1000, ge=1, le=10000),
                   last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=32)):
    """Log lines in order. As server-sent events (`follow=true`), each event's id is the line id:
    reconnect with Last-Event-ID to continue after the last line received; the stream ends with an
    `end` event once the job is finished and every line has been sent."""
    db = request.app.state.db
    resume = (last_event_id or "").strip()
    if resume.isascii() and resume.isdigit() and int(resume) <= MAX_ID:  # anything else is not an id we sent
        after = int(resume)
    lines, status = await run_in_threadpool(logs.read, db, job_id, after, limit, stage, stream)
    if not follow and "text/event-stream" not in request.headers.get("accept", ""):
        return schemas.LogsOut(lines=lines, next_after=lines[-1].id if lines else after, job_status=status)

    async def events():
        cursor, batch, job_status = after, lines, status
        last_sent = time.monotonic()
        while True:
            for line in batch:
                yield f"id: {line.id}\nevent: log\ndata: {line.model_dump_json()}\n\n"
                cursor = line.id
            if batch:
                last_sent = time.monotonic()
            if len(batch) < limit:
                if job_status in lifecycle.TERMINAL or not follow:
                    yield f"event: end\ndata: {json.dumps({'job_status': job_status})}\n\n"
                    return
                if await request.is_disconnected():
                    return
                if time.monotonic() - last_sent > 15:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(0.5)
            batch, job_status = await run_in_threadpool(logs.read, db, job_id, cursor, limit, stage, stream)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/metrics", response_model=schemas.MetricsOut, dependencies=[READ],
            responses=MISSING)
def job_metrics(request: Request, job_id: str,
                keys: str | None = Query(None, max_length=1000, description="comma-separated, e.g. loss,lr"),
                max_points: int = Query(500, ge=2, le=20000), stage: str | None = Query(None, max_length=64),
                split: str | None = Query(None, max_length=32)):
    """Metric series per stage, downsampled on the server to at most max_points per series."""
    wanted = [k for k in (keys or "").split(",") if k] or None
    return metrics.series(request.app.state.db, job_id, wanted, max_points, stage, split)


@router.get("/jobs/{job_id}/artifacts", response_model=list[schemas.ArtifactOut], dependencies=[READ],
            responses=MISSING)
def job_artifacts(request: Request, job_id: str):
    return artifacts.list_for_job(request.app.state.db, job_id)
