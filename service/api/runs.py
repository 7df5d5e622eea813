"""/v1/runs (a run = one stage of a job), /v1/artifacts downloads, /v1/workers, /v1/tokens."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from service import auth
from service.api import schemas
from service.api.deps import ADMIN, READ
from service.services import artifacts, workers
from service.services.jobs import NotFound

router = APIRouter(prefix="/v1")
NOT_FOUND = {401: {"model": schemas.MessageOut}, 403: {"model": schemas.MessageOut},
             404: {"model": schemas.MessageOut}}


@router.get("/runs/{run_id}/lineage", response_model=schemas.LineageOut, dependencies=[READ], tags=["runs"],
            responses=NOT_FOUND)
def run_lineage(request: Request, run_id: str):
    """What a run was made from (tokenizer -> parent -> inherited child -> round 1 -> round 2 -> export)."""
    return artifacts.lineage(request.app.state.db, run_id)


@router.get("/artifacts/{artifact_id}/download", dependencies=[READ], tags=["runs"], responses=NOT_FOUND)
def download_artifact(request: Request, artifact_id: str):
    """A file as is; a directory (checkpoint, Hugging Face model) as a tar stream."""
    a = artifacts.get(request.app.state.db, artifact_id)
    path = Path(a.path)
    if path.is_file():
        return FileResponse(path, filename=path.name)
    if path.is_dir():
        return StreamingResponse(artifacts.tar_stream(path), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{path.name}.tar"'})
    raise NotFound(f"artifact {artifact_id}: {a.path} no longer exists on the server")


@router.get("/workers", response_model=list[schemas.WorkerOut], dependencies=[READ], tags=["workers"])
def list_workers(request: Request):
    st = request.app.state
    return workers.list_workers(st.db, st.settings.worker_timeout_s)


def _token_view(t, token: str | None = None) -> dict:
    return {"id": t.id, "name": t.name, "scope": t.scope, "created_at": t.created_at, "revoked_at": t.revoked_at,
            "token": token}


@router.post("/tokens", response_model=schemas.TokenOut, status_code=201, dependencies=[ADMIN], tags=["tokens"])
def create_token(request: Request, body: schemas.TokenIn):
    """A new token; the answer is the only time it is shown."""
    token, row = auth.create_token(request.app.state.db, body.scope, body.name)
    return _token_view(row, token)


@router.get("/tokens", response_model=list[schemas.TokenOut], dependencies=[ADMIN], tags=["tokens"])
def list_tokens(request: Request):
    return [_token_view(t) for t in auth.list_tokens(request.app.state.db)]


@router.delete("/tokens/{token_id}", response_model=schemas.MessageOut, dependencies=[ADMIN], tags=["tokens"],
               responses=NOT_FOUND)
def revoke_token(request: Request, token_id: str):
    if not auth.revoke_token(request.app.state.db, token_id):
        raise NotFound(f"token {token_id} not found or already revoked")
    return {"detail": f"token {token_id} revoked"}
