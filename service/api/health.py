"""/healthz (the process answers), /readyz (database reachable and migrated), /metrics (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import text

from service.api import errors
from service.api.deps import AUTH_ERRORS, READ

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database unreachable or not at the schema head"}})
def readyz(request: Request):
    st = request.app.state
    try:
        with st.db.read() as s:
            version = s.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:
        return errors.respond(request, 503, f"database: {type(exc).__name__}", type_=errors.UNAVAILABLE)
    if version != st.schema_head:
        return errors.respond(request, 503, f"database schema at {version}, service needs {st.schema_head}: "
                              "run `tinyforge db upgrade`", type_=errors.UNAVAILABLE)
    return {"status": "ready", "schema": version}


METRICS_PAGE = {200: {"description": "Prometheus text format, or OpenMetrics when the Accept header asks for it",
                     "content": {"text/plain": {"schema": {"type": "string"}},
                                 "application/openmetrics-text": {"schema": {"type": "string"}}}}}


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[READ], responses={**AUTH_ERRORS, **METRICS_PAGE})
def metrics(request: Request):
    """Jobs by status, queue depth, worker heartbeats, webhook outbox, request counts and latency,
    process metrics and tinyforge_build_info (prometheus_client)."""
    body, content_type = request.app.state.stats.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
