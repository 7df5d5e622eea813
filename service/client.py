"""A small HTTP client of the REST API (used by `tinyforge jobs` and the benchmark)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import httpx

from service.settings import default_home


def default_token() -> str | None:
    """TINYFORGE_TOKEN, else the admin token `serve` wrote into the state directory."""
    if os.environ.get("TINYFORGE_TOKEN"):
        return os.environ["TINYFORGE_TOKEN"]
    path = default_home() / "admin.token"
    return path.read_text().strip() if path.exists() else None


class ApiError(Exception):
    def __init__(self, status: int, detail):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {format_detail(detail)}")


def format_detail(detail) -> str:
    if isinstance(detail, list):
        return "\n".join(f"  {d.get('field', '?')}: {d.get('msg', '')}" for d in detail)
    return str(detail)


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})

    def _call(self, method: str, path: str, **kw):
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail)
        return r

    def submit(self, path: Path, idempotency_key: str | None = None, plan: bool = False) -> tuple[dict, int]:
        body = Path(path).read_bytes()
        ctype = "application/json" if str(path).endswith(".json") else "application/yaml"
        headers = {"Content-Type": ctype}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        r = self._call("POST", "/v1/jobs:plan" if plan else "/v1/jobs", content=body, headers=headers)
        return r.json(), r.status_code

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def list(self, **params) -> dict:
        return self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v}).json()

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel").json()

    def retry(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/retry").json()

    def follow_logs(self, job_id: str, after: int = 0) -> Iterator[dict]:
        """Server-sent events; reconnects with Last-Event-ID if the connection drops."""
        last = after
        while True:
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"},
                                      headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                                      timeout=httpx.Timeout(30.0, read=60.0)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise ApiError(r.status_code, r.json().get("detail"))
                    event, data = "message", ""
                    for line in r.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line.startswith("id:"):
                            last = int(line[3:].strip())
                        elif line == "":
                            if event == "end":
                                return
                            if data:
                                yield json.loads(data)
                            event, data = "message", ""
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ConnectError):
                continue
