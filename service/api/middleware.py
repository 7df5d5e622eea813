"""Pure ASGI middleware (no per-request task overhead): request body size limit, request id, metrics and
access log."""
from __future__ import annotations

import logging
import re
import time
import uuid

from service.api import errors
from service.prom import Metrics
from service.services import lifecycle

access = logging.getLogger("tinyforge.access")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's id is echoed and logged: plain tokens only


def _413(limit: int) -> tuple[dict, bytes]:
    msg = f"request body is larger than the limit of {limit} bytes"
    body = errors.problem_bytes(413, msg, type_=errors.TOO_LARGE,
                                errors=[{"loc": ["body"], "field": "(body)", "type": "too_large", "msg": msg}])
    return {"type": "http.response.start", "status": 413,
            "headers": [(b"content-type", errors.MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode())]}, body


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    start, body = _413(self.max_bytes)
                    await send(start)
                    await send({"type": "http.response.body", "body": body})
                    return
                return await self.app(scope, receive, send)  # declared and within the limit
        # no Content-Length (chunked): read the body up to the limit, then replay it to the app
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                start, body = _413(self.max_bytes)
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class AccessLog:
    """Per request: the request id (the caller's valid X-Request-ID, else a new one) in the response
    header and in `lifecycle.REQUEST_ID` (job events written by the request carry it), request metrics,
    and one access-log line: method, route template (never the raw path or query: no ids or secrets of
    callers), status, duration, request id."""

    def __init__(self, app, stats: Metrics):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        token = lifecycle.REQUEST_ID.set(request_id)

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            lifecycle.REQUEST_ID.reset(token)
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.stats.observe(scope["method"], route, status[0], seconds)
            access.info("%s %s %d %.1f ms %s", scope["method"], route, status[0], seconds * 1000, request_id,
                        extra={"method": scope["method"], "route": route, "status": status[0],
                               "duration_ms": round(seconds * 1000, 2), "request_id": request_id})
