"""/v1/stages: one stage of a job (a row of the `stages` table; the engine ran it in its run directory).

Before this router the same thing was called a "run" (/v1/runs/...): those paths still answer, marked
deprecated in the OpenAPI spec, for one release (docs/service.md)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from service.api import schemas
from service.api.deps import AUTH_ERRORS, NOT_FOUND, READ
from service.services import artifacts

router = APIRouter(prefix="/v1", tags=["stages"], responses=AUTH_ERRORS)


@router.get("/stages/{stage_id}/lineage", response_model=schemas.LineageOut, dependencies=[READ],
            responses=NOT_FOUND)
def stage_lineage(request: Request, stage_id: str):
    """What a stage was made from (tokenizer -> parent -> inherited child -> round 1 -> round 2 -> export)."""
    return artifacts.lineage(request.app.state.db, stage_id)


@router.get("/runs/{run_id}/lineage", response_model=schemas.LineageOut, dependencies=[READ], responses=NOT_FOUND,
            deprecated=True)
def run_lineage(request: Request, run_id: str):
    """The old path of /v1/stages/{stage_id}/lineage; removed in the next release."""
    return artifacts.lineage(request.app.state.db, run_id)
