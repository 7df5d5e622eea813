"""A small HTTP client of the REST API (used by `tinyforge jobs` and the demo). Answers are parsed into the
response models the server builds them from (service/api/schemas.py), so both sides share one shape."""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import TypeAdapter

from service.api import schemas
from service.settings import default_home


def default_token() -> str | None:
    """TINYFORGE_TOKEN, else the admin token `serve` wrote into the state directory."""
    if os.environ.get("TINYFORGE_TOKEN"):
        return os.environ["TINYFORGE_TOKEN"]
    path = default_home() / "admin.token"
    return path.read_text().strip() if path.exists() else None


class ApiError(Exception):
    """An error answer: an RFC 9457 problem (`detail`, and the bad fields under `errors`)."""

    def __init__(self, status: int, detail, errors: list[dict] | None = None, title: str = ""):
        self.status, self.detail, self.errors, self.title = status, detail, errors or [], title
        super().__init__(f"HTTP {status}: {format_detail(detail, self.errors)}")

    @classmethod
    def from_response(cls, r: httpx.Response) -> "ApiError":
        try:
            body = r.json()
        except ValueError:
            return cls(r.status_code, r.text or r.reason_phrase)
        if not isinstance(body, dict):
            return cls(r.status_code, r.text)
        return cls(r.status_code, body.get("detail") or body.get("title") or r.reason_phrase,
                   body.get("errors"), body.get("title", ""))


def format_detail(detail, errors: list[dict] | None = None) -> str:
    if errors:
        return "\n".join(f"  {d.get('field', '?')}: {d.get('msg', '')}" for d in errors)
    return str(detail)


class FollowGaveUp(Exception):
    """The log stream could not be reached for longer than the follower was told to keep trying."""


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: capped exponential with jitter, starting from the server's `retry:` when it
    sent one (the SSE reconnection time), so many clients of a restarting server do not come back at once."""
    initial_s: float = 0.5
    max_s: float = 30.0
    give_up_s: float = 300.0  # unreachable this long in a row: stop

    def delay(self, attempt: int, retry_s: float | None = None) -> float:
        d = min(self.max_s, (retry_s if retry_s is not None else self.initial_s) * 2 ** attempt)
        return d / 2 + random.uniform(0, d / 2)  # "equal jitter": never less than half the step


_ARTIFACTS = TypeAdapter(list[schemas.ArtifactOut])
_WORKERS = TypeAdapter(list[schemas.WorkerOut])


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0, backoff: Backoff = Backoff()):
        self.backoff = backoff
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})

    def _call(self, method: str, path: str, **kw):
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r

    def submit(self, path: Path, idempotency_key: str | None = None,
               plan: bool = False) -> tuple[schemas.JobOut | schemas.PlanOut, int]:
        """(the job, 201 created or 200 a repeat of an earlier key); with plan=True (the plan, 200)."""
        body = Path(path).read_bytes()
        ctype = "application/json" if str(path).endswith(".json") else "application/yaml"
        headers = {"Content-Type": ctype}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        r = self._call("POST", "/v1/jobs:plan" if plan else "/v1/jobs", content=body, headers=headers)
        return (schemas.PlanOut if plan else schemas.JobOut).model_validate_json(r.content), r.status_code

    def get(self, job_id: str) -> schemas.JobOut:
        return schemas.JobOut.model_validate_json(self._call("GET", f"/v1/jobs/{job_id}").content)

    def list(self, **params) -> schemas.JobListOut:
        r = self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})
        return schemas.JobListOut.model_validate_json(r.content)

    def cancel(self, job_id: str) -> schemas.JobOut:
        return schemas.JobOut.model_validate_json(self._call("POST", f"/v1/jobs/{job_id}:cancel").content)

    def retry(self, job_id: str) -> schemas.JobOut:
        return schemas.JobOut.model_validate_json(self._call("POST", f"/v1/jobs/{job_id}:retry").content)

    def logs(self, job_id: str, after: int = 0, **params) -> schemas.LogsOut:
        """One page of log lines after line id `after` (follow_logs streams them instead)."""
        r = self._call("GET", f"/v1/jobs/{job_id}/logs", params={"after": after, **params})
        return schemas.LogsOut.model_validate_json(r.content)

    def metrics(self, job_id: str, **params) -> schemas.MetricsOut:
        r = self._call("GET", f"/v1/jobs/{job_id}/metrics", params={k: v for k, v in params.items() if v})
        return schemas.MetricsOut.model_validate_json(r.content)

    def artifacts(self, job_id: str) -> list[schemas.ArtifactOut]:
        return _ARTIFACTS.validate_json(self._call("GET", f"/v1/jobs/{job_id}/artifacts").content)

    def lineage(self, stage_id: str) -> schemas.LineageOut:
        return schemas.LineageOut.model_validate_json(self._call("GET", f"/v1/stages/{stage_id}/lineage").content)

    def workers(self) -> list[schemas.WorkerOut]:
        return _WORKERS.validate_json(self._call("GET", "/v1/workers").content)

    def follow_logs(self, job_id: str, after: int = 0,
                    on_retry: Callable[[str, float], None] = lambda why, delay: None) -> Iterator[schemas.LogLineOut]:
        """Log lines as server-sent events until the job has ended. A dropped stream is resumed with
        Last-Event-ID after a backoff delay (see Backoff); FollowGaveUp once the server has been out of
        reach for `backoff.give_up_s`. A 4xx answer (no such job, bad token) raises ApiError at once."""
        last, attempt, retry_s, down_since = after, 0, None, None
        while True:
            try:
                with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"},
                                 headers={"Last-Event-ID": str(last)},
                                 timeout=httpx.Timeout(30.0, read=60.0)) as source:
                    r = source.response
                    if r.status_code >= 400:
                        r.read()
                        if r.status_code < 500:
                            raise ApiError.from_response(r)
                        raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                    down_since = None  # reached the server
                    for sse in source.iter_sse():
                        if sse.retry is not None:
                            retry_s = sse.retry / 1000
                        if sse.id:
                            last = int(sse.id)
                        attempt = 0  # the stream delivered: start the backoff over
                        if sse.event == "end":
                            return
                        if sse.data:
                            yield schemas.LogLineOut.model_validate_json(sse.data)
                why = "stream closed before the end event"
            except (httpx.TransportError, httpx.HTTPStatusError, SSEError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since >= self.backoff.give_up_s:
                raise FollowGaveUp(f"gave up following job {job_id}'s log: the server has been unreachable for "
                                   f"{now - down_since:.0f} s (last error: {why})")
            delay = self.backoff.delay(attempt, retry_s)
            attempt += 1
            on_retry(why, delay)
            time.sleep(delay)
