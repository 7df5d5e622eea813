"""/v1/tokens (admin: create, list, revoke API tokens) and /v1/whoami (any valid token)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service import auth
from service.api import schemas
from service.api.deps import ADMIN, AUTH_ERRORS, BODY_ERRORS, NOT_FOUND, READ
from service.auth import Principal
from service.body import parse_model
from service.services.jobs import NotFound
from service.services.views import token_view

router = APIRouter(prefix="/v1", tags=["tokens"], responses=AUTH_ERRORS)
TOKEN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": schemas.TokenIn.model_json_schema()}}}}


@router.post("/tokens", response_model=schemas.TokenOut, status_code=201, dependencies=[ADMIN],
             openapi_extra=TOKEN_BODY, responses=BODY_ERRORS)
async def create_token(request: Request):
    """A new token; the answer is the only time it is shown."""
    # the body is read here, after the token check: a caller without a token learns nothing about bodies
    body = parse_model(schemas.TokenIn, await request.body())
    token, row = await run_in_threadpool(auth.create_token, request.app.state.db, body.scope, body.name)
    return token_view(row, token)


@router.get("/tokens", response_model=list[schemas.TokenOut], dependencies=[ADMIN])
def list_tokens(request: Request):
    return [token_view(t) for t in auth.list_tokens(request.app.state.db)]


@router.delete("/tokens/{token_id}", response_model=schemas.MessageOut, dependencies=[ADMIN], responses=NOT_FOUND)
def revoke_token(request: Request, token_id: str):
    if not auth.revoke_token(request.app.state.db, token_id):
        raise NotFound(f"token {token_id} not found or already revoked")
    return schemas.MessageOut(detail=f"token {token_id} revoked")


@router.get("/whoami", response_model=schemas.WhoamiOut)
def whoami(principal: Principal = READ):
    """The calling token's id, name and scope (any valid token may ask)."""
    return schemas.WhoamiOut(token_id=principal.token_id, name=principal.name, scope=principal.scope)
