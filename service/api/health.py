"""/healthz (the process answers), /readyz (database reachable and migrated), /metrics (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from service import prom
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
        return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, status_code=503)
    if version != st.schema_head:
        return JSONResponse({"status": "unavailable", "reason": f"database schema at {version}, service needs "
                             f"{st.schema_head}: run `tinyforge db upgrade`"}, status_code=503)
    return {"status": "ready", "schema": version}


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[READ], responses=AUTH_ERRORS)
def metrics(request: Request):
    """Prometheus text format: jobs by status, queue depth, worker heartbeats, request latency."""
    st = request.app.state
    return PlainTextResponse(prom.render(st.db, st.stats, st.settings.worker_timeout_s),
                             media_type="text/plain; version=0.0.4")
