"""/v1/workers: the registered workers, what they offer and whether they are alive."""
from __future__ import annotations

from fastapi import APIRouter, Request

from service.api import schemas
from service.api.deps import AUTH_ERRORS, READ
from service.services import workers

router = APIRouter(prefix="/v1", tags=["workers"], responses=AUTH_ERRORS)


@router.get("/workers", response_model=list[schemas.WorkerOut], dependencies=[READ])
def list_workers(request: Request):
    st = request.app.state
    return workers.list_workers(st.db, st.settings.worker_timeout_s)
