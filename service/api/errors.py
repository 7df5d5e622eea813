"""Every bad input is a 4xx naming the field; errors have one shape:
{"detail": [{"loc": [...], "field": "a.b.0", "msg": ..., "type": ...}]} or {"detail": "message"}."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from service.services.jobs import Conflict, NotFound
from service.spec import SpecError

log = logging.getLogger("tinyforge.api")


def error_items(errors: list[dict]) -> list[dict]:
    out = []
    for e in errors:
        loc = [x if isinstance(x, (str, int)) else str(x) for x in e.get("loc", ())]
        field = ".".join(str(x) for x in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc))
        out.append({"loc": loc, "field": field or "(body)", "msg": str(e.get("msg", "")), "type": e.get("type", "")})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": error_items(list(exc.errors()))}, status_code=422)

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError):
        return JSONResponse({"detail": error_items(exc.errors)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError):
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse({"detail": "database unavailable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "2"})

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)
