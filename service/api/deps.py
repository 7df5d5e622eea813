"""Request dependencies: the app's shared objects and bearer-token authentication."""
from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal
from service.body import SpecError

bearer = HTTPBearer(auto_error=False, description="an API token from `tinyforge token create`")


def require(scope: str):
    async def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if creds is None or not creds.credentials:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})
        principal = request.app.state.tokens.lookup(creds.credentials)
        if principal is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if not principal.allows(scope):
            raise HTTPException(403, f"this token's scope ({principal.scope}) does not allow this; it needs {scope}")
        refuse_nul(request)
        return principal
    return check


def refuse_nul(request: Request) -> None:
    """PostgreSQL text cannot hold a NUL character (a query with one fails): refuse it in path and query
    parameters as a 422 naming the parameter, on every database alike."""
    bad = [("path", k) for k, v in request.path_params.items() if isinstance(v, str) and "\x00" in v]
    bad += [("query", k) for k, v in request.query_params.multi_items() if "\x00" in v]
    if bad:
        raise SpecError([{"loc": list(loc), "msg": "NUL characters are not accepted", "type": "string_nul"}
                         for loc in dict.fromkeys(bad)])


def problem_answer(description: str) -> dict:
    """An error answer for `responses=`; errors.document declares its problem+json body in the spec."""
    return {"description": description}


# what every route behind a token may answer, declared on each such route for the published OpenAPI spec
AUTH_ERRORS = {401: problem_answer("missing, invalid or revoked token"),
               403: problem_answer("the token's scope does not allow this")}
NOT_FOUND = {404: problem_answer("no such object")}
CONFLICT = {409: problem_answer("the object's state does not allow this")}
BODY_ERRORS = {413: problem_answer("request body over the size limit"),
               422: problem_answer("invalid input: each bad field under `errors`")}

READ, SUBMIT, ADMIN = Depends(require("read")), Depends(require("submit")), Depends(require("admin"))
