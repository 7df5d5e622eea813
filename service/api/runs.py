"""/v1/runs (a run = one stage of a job), /v1/artifacts downloads, /v1/workers, /v1/tokens, /v1/whoami."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service import auth
from service.api import schemas
from service.api.deps import ADMIN, AUTH_ERRORS, BODY_ERRORS, NOT_FOUND, READ
from service.auth import Principal
from service.services import artifacts, workers
from service.services.jobs import NotFound
from service.body import parse_model

router = APIRouter(prefix="/v1", responses=AUTH_ERRORS)
BINARY = {"schema": {"type": "string", "format": "binary"}}
TOKEN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": schemas.TokenIn.model_json_schema()}}}}


class OctetStream(Response):
    media_type = "application/octet-stream"


def _attachment(name: str) -> str:
    # a name recorded by a stage may hold quotes or non-ASCII: give an ASCII fallback and the exact UTF-8 name
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/runs/{run_id}/lineage", response_model=schemas.LineageOut, dependencies=[READ], tags=["runs"],
            responses=NOT_FOUND)
def run_lineage(request: Request, run_id: str):
    """What a run was made from (tokenizer -> parent -> inherited child -> round 1 -> round 2 -> export)."""
    return artifacts.lineage(request.app.state.db, run_id)


@router.get("/artifacts/{artifact_id}/download", dependencies=[READ], tags=["runs"], response_class=OctetStream,
            responses={**NOT_FOUND, 200: {"description": "the file, or a directory as a tar stream",
                                          "content": {"application/octet-stream": BINARY, "application/x-tar": BINARY}}})
def download_artifact(request: Request, artifact_id: str):
    """A file as is; a directory (checkpoint, Hugging Face model) as a tar stream. Always sent as an
    attachment of a binary type, so a recorded file never renders as a page of this origin."""
    a = artifacts.get(request.app.state.db, artifact_id)
    path = Path(a.path)
    if path.resolve() != path:  # stored resolved: a link put in its place since is not followed
        raise NotFound(f"artifact {artifact_id}: {a.path} was replaced by a link; not served")
    headers = {"X-Content-Type-Options": "nosniff"}
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream",
                            headers={**headers, "Content-Disposition": _attachment(path.name)})
    if path.is_dir():
        return StreamingResponse(artifacts.tar_stream(path), media_type="application/x-tar",
                                 headers={**headers, "Content-Disposition": _attachment(path.name + ".tar")})
    raise NotFound(f"artifact {artifact_id}: {a.path} no longer exists on the server")


@router.get("/workers", response_model=list[schemas.WorkerOut], dependencies=[READ], tags=["workers"])
def list_workers(request: Request):
    st = request.app.state
    return workers.list_workers(st.db, st.settings.worker_timeout_s)


def _token_view(t, token: str | None = None) -> dict:
    return {"id": t.id, "name": t.name, "scope": t.scope, "created_at": t.created_at, "revoked_at": t.revoked_at,
            "token": token}


@router.post("/tokens", response_model=schemas.TokenOut, status_code=201, dependencies=[ADMIN], tags=["tokens"],
             openapi_extra=TOKEN_BODY, responses=BODY_ERRORS)
async def create_token(request: Request):
    """A new token; the answer is the only time it is shown."""
    # the body is read here, after the token check: a caller without a token learns nothing about bodies
    body = parse_model(schemas.TokenIn, await request.body())
    token, row = await run_in_threadpool(auth.create_token, request.app.state.db, body.scope, body.name)
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


@router.get("/whoami", response_model=schemas.WhoamiOut, tags=["tokens"])
def whoami(principal: Principal = READ):
    """The calling token's id, name and scope (any valid token may ask)."""
    return {"token_id": principal.token_id, "name": principal.name, "scope": principal.scope}
