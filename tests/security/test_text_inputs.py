"""Text a database cannot store, on SQLite and PostgreSQL alike: a NUL character (PostgreSQL text cannot
hold one; every such query failed with a 500 there) in a path parameter, a query parameter or anywhere in
a body, and lone surrogates ("\\ud800" in JSON, not encodable as UTF-8), are 422s naming where; a
Last-Event-ID too large for an id (a 500 on both) is ignored like any other id the server never sent."""
from __future__ import annotations

import httpx
import pytest

from security_fixtures import HOSTILE_ENGINE, Service, stage, svc_fixtures

NUL_PATHS = [("get", "/v1/jobs/a%00b", ["path", "job_id"]), ("get", "/v1/jobs/x%00/events", ["path", "job_id"]),
             ("get", "/v1/jobs/x%00/logs", ["path", "job_id"]), ("get", "/v1/jobs/x%00/metrics", ["path", "job_id"]),
             ("get", "/v1/jobs/x%00/artifacts", ["path", "job_id"]), ("post", "/v1/jobs/x%00:cancel", ["path", "job_id"]),
             ("post", "/v1/jobs/x%00:retry", ["path", "job_id"]), ("get", "/v1/runs/%00/lineage", ["path", "run_id"]),
             ("get", "/v1/artifacts/%00/download", ["path", "artifact_id"]),
             ("delete", "/v1/tokens/%00", ["path", "token_id"]),
             ("get", "/v1/jobs?name=%00", ["query", "name"]), ("get", "/v1/jobs?name=a%00*", ["query", "name"]),
             ("get", "/v1/jobs?cursor=%00", ["query", "cursor"]), ("get", "/v1/jobs?label=k%3D%00", ["query", "label"]),
             ("get", "/v1/jobs?label=%00", ["query", "label"])]
BODIES = [
    ("/v1/jobs", b'{"name": "a\\u0000b", "stages": [{"kind": "train"}]}', ["body", "name"]),
    ("/v1/jobs", b'{"name": "x", "labels": {"k": "\\u0000"}, "stages": [{"kind": "train"}]}', ["body", "labels", "k"]),
    ("/v1/jobs", b'{"name": "x", "stages": [{"kind": "train", "config": {"echo": ["ok", "\\u0000"]}}]}',
     ["body", "stages", 0, "config", "echo", 1]),
    ("/v1/jobs:plan", b'{"name": "x", "stages": [{"kind": "train", "config": {"echo": {"\\u0000": 1}}}]}',
     ["body", "stages", 0, "config", "echo", "\x00"]),
    ("/v1/jobs", b'{"name": "x", "stages": [{"kind": "train", "config": {"echo": "\\ud800"}}]}',
     ["body", "stages", 0, "config", "echo"]),
    ("/v1/jobs", b'{"name": "x", "stages": [{"kind": "train", "config": {"echo": {"\\udfff": 1}}}]}',
     ["body", "stages", 0, "config", "echo", "\\udfff"]),
    ("/v1/tokens", b'{"scope": "read", "name": "\\u0000"}', ["body", "name"]),
    ("/v1/tokens", b'{"scope": "read", "name": "\\ud83d"}', ["body", "name"]),
]


def test_unstorable_text_is_a_422_naming_where(any_service):
    svc = any_service
    job = svc.submit({"name": "kept", "stages": [stage("train")]})
    for method, path, loc in NUL_PATHS:
        r = svc.http.request(method.upper(), path)
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        assert loc in [e["loc"] for e in r.json()["errors"]], (path, r.text)
        assert httpx.request(method.upper(), svc.url + path, timeout=30).status_code == 401  # the token comes first
    for path, body, loc in BODIES:
        r = svc.http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert loc in [e["loc"] for e in r.json()["errors"]], (body, r.text)
    r = svc.http.post("/v1/jobs", content=b'name: "a\\0b"\nstages: [{kind: train}]\n',
                      headers={"content-type": "application/yaml"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "name"], r.text
    # nothing was stored, and text that is fine (accents, emoji, RTL) still is
    assert [j["id"] for j in svc.http.get("/v1/jobs").json()["items"]] == [job["id"]]
    fine = svc.submit({"name": "é 😀 عربى", "labels": {"k": "ü"}, "stages": [stage("train", echo="\u200b\u202e")]})
    assert svc.job(fine["id"])["name"] == "é 😀 عربى"


def test_a_last_event_id_the_server_never_sent_is_ignored(any_service):
    svc = any_service
    job = svc.submit({"name": "x", "stages": [stage("train")]})
    for value in ("99999999999999999999999999999999", "9223372036854775808", "²", "-1", "1e3"):
        r = svc.http.get(f"/v1/jobs/{job['id']}/logs", headers={"Last-Event-ID": value.encode()})
        assert r.status_code == 200 and r.json()["next_after"] == 0, (value, r.text)
    r = svc.http.get(f"/v1/jobs/{job['id']}/logs", headers={"Last-Event-ID": "7"})
    assert r.status_code == 200 and r.json()["next_after"] == 7, r.text


@pytest.fixture
def stage_db(request, tmp_path):
    yield from svc_fixtures._db_url(request.param, tmp_path)


@pytest.mark.parametrize("stage_db", ["sqlite", "postgresql"], indirect=True)
def test_a_stage_printing_raw_bytes_still_succeeds(stage_db, tmp_path):
    """A stage's own output is not checked at the door: a NUL and invalid UTF-8 on its stdout must still be
    stored (as replacement characters) and must not cost the job its lease."""
    svc = Service(tmp_path / "home", stage_db, embedded_worker=True, TINYFORGE_ENGINE_COMMAND=HOSTILE_ENGINE)
    try:
        job = svc.submit({"name": "raw", "stages": [stage("train", echo="plain", steps=2)]})
        job = svc.wait(job["id"], timeout=90)
        lines = [x["line"] for x in svc.http.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]]
    finally:
        svc.close()
    assert (job["status"], job["restarts"]) == ("succeeded", 0), job
    assert any(x.startswith("raw bytes:") for x in lines), lines
