"""Every error answer is an RFC 9457 problem (`application/problem+json`), one shape for all:
{"type", "title", "status", "detail", "instance"} and, for bad input, the fields under `errors`:
[{"loc": [...], "field": "a.b.0", "msg": ..., "type": ...}]. `openapi()` declares that shape on every
4xx/5xx answer of the published spec, so clients (the CLI, the dashboard, schemathesis) can rely on it."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.services.jobs import Conflict, NotFound
from service.body import SpecError

log = logging.getLogger("tinyforge.api")

MEDIA_TYPE = "application/problem+json"
# problem types beyond the status code's own meaning (RFC 9457 3.1.1; "about:blank" = just the status)
VALIDATION = "urn:tinyforge:problem:validation"
TOO_LARGE = "urn:tinyforge:problem:body-too-large"
UNAVAILABLE = "urn:tinyforge:problem:database-unavailable"


def error_items(errors: list[dict]) -> list[dict]:
    out = []
    for e in errors:
        loc = [x if isinstance(x, (str, int)) else str(x) for x in e.get("loc", ())]
        field = ".".join(str(x) for x in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc))
        out.append({"loc": loc, "field": field or "(body)", "msg": str(e.get("msg", "")), "type": e.get("type", "")})
    return out


def problem(status: int, detail: str, *, type_: str = "about:blank", instance: str | None = None,
            errors: list[dict] | None = None) -> dict:
    body = {"type": type_, "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return body


def problem_bytes(status: int, detail: str, **kw) -> bytes:
    return json.dumps(problem(status, detail, **kw)).encode()


def respond(request: Request, status: int, detail: str, headers: dict | None = None, **kw) -> JSONResponse:
    return JSONResponse(problem(status, detail, instance=request.url.path, **kw), status_code=status,
                        headers=headers, media_type=MEDIA_TYPE)


def invalid(request: Request, errors: list[dict]) -> JSONResponse:
    items = error_items(errors)
    detail = "; ".join(f"{e['field']}: {e['msg']}" for e in items[:3]) + ("; ..." if len(items) > 3 else "")
    return respond(request, 422, detail or "invalid request", type_=VALIDATION, errors=items)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return invalid(request, list(exc.errors()))

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError):
        return invalid(request, exc.errors)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return respond(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return respond(request, 409, str(exc))

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError):
        log.warning("database unavailable: %s", exc.orig)
        return respond(request, 503, "database unavailable; retry shortly", {"Retry-After": "2"}, type_=UNAVAILABLE)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # 401/403 from auth, and Starlette's own 404 (no route) and 405 (method not allowed)
        return respond(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, 500, "internal error; see the server log")


def document(schema: dict, problem_schema: dict) -> None:
    """Declare the problem shape as the body of every error answer in the OpenAPI document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(problem_schema.pop("$defs", {}))
    components["Problem"] = problem_schema
    content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for code, answer in op.get("responses", {}).items():
                if code[0] in "45":
                    answer["content"] = content
                    answer.setdefault("description", HTTPStatus(int(code)).phrase if code.isdigit() else "error")
    for unused in ("HTTPValidationError", "ValidationError", "MessageOut", "ValidationErrorOut"):
        if unused in components and f'/{unused}"' not in json.dumps(schema):
            del components[unused]
