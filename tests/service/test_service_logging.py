"""The access log (--log-format json) and the request id: returned in X-Request-ID (the caller's own when
it sends a plain one), written in the access-log line, and carried into the job events the request caused."""
from __future__ import annotations

import json
import re

from tests.support.service import Service, stage


def test_access_log_json_and_request_id_in_header_and_job_events(tmp_path):
    svc = Service.on_sqlite(tmp_path, log_level="info", serve_args=("--log-format", "json"))
    try:
        r = svc.http.post("/v1/jobs", json={"name": "traced", "stages": [stage("train", steps=3)]},
                          headers={"X-Request-ID": "ci-run-42.submit"})
        assert r.status_code == 201 and r.headers["x-request-id"] == "ci-run-42.submit"
        job = r.json()
        cancel = svc.http.post(f"/v1/jobs/{job['id']}:cancel")
        generated = cancel.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        hostile = svc.http.get(f"/v1/jobs/{job['id']}", headers={"X-Request-ID": "x\" injected=1 " + "a" * 200})
        assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])  # not echoed: a fresh id instead
        assert svc.http.get("/v1/jobs/nope?token=secret-in-query").status_code == 404
        events = svc.http.get(f"/v1/jobs/{job['id']}/events").json()
    finally:
        svc.close()
    by_type = {e["type"]: e for e in events}
    assert by_type["submitted"]["data"] == {"request_id": "ci-run-42.submit"}
    assert by_type["cancelled"]["data"] == {"request_id": generated}
    log = (tmp_path / "home" / f"serve-{svc.port}.log").read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "tinyforge.access"]
    assert {"time", "level", "message"} <= set(access[0])
    lines = {(a["method"], a["route"], a["status"]): a for a in access}
    submit = lines[("POST", "/v1/jobs", 201)]
    assert submit["request_id"] == "ci-run-42.submit" and submit["duration_ms"] > 0
    assert lines[("POST", "/v1/jobs/{job_id}:cancel", 200)]["request_id"] == generated
    assert ("GET", "/v1/jobs/{job_id}", 404) in lines  # the route template: no ids, no query string
    assert "secret-in-query" not in log and job["id"] not in "".join(a["route"] for a in access)
    assert "injected" not in log
