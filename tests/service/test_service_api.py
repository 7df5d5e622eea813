"""The REST API against a real `tinyforge serve` (no worker) on SQLite and PostgreSQL: auth,
idempotency, bad input, listing, queue reasons and limits, cancel/retry of queued jobs, health."""
from __future__ import annotations

import concurrent.futures as cf
import re
import time

import httpx
import pytest

from service.api import schemas
from tests.support.service import stage

SPEC = {"name": "api-job", "labels": {"team": "nlp"}, "stages": [stage("train", steps=3)]}


def count_jobs(api) -> int:
    n, cursor = 0, None
    while True:
        page = api.http.get("/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        n += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return n


def test_every_endpoint_but_health_needs_a_token(api):
    schema = api.http.get("/openapi.json").json()
    read = api.http.post("/v1/tokens", json={"scope": "read", "name": "ro"}).json()["token"]
    checked = 0
    for path, methods in schema["paths"].items():
        url = re.sub(r"\{[^}]+\}", "x", path)
        for method in methods:
            r = httpx.request(method.upper(), api.url + url, json=SPEC if method == "post" else None)
            if path in ("/healthz", "/readyz"):
                assert r.status_code in (200, 503)
                continue
            assert r.status_code == 401, (method, path, r.status_code)
            r = httpx.request(method.upper(), api.url + url, headers={"Authorization": "Bearer tf_wrong"})
            assert r.status_code == 401, (method, path)
            checked += 1
            if method != "get":  # a read token may not change anything
                r = httpx.request(method.upper(), api.url + url, json=SPEC if method == "post" else None,
                                  headers={"Authorization": f"Bearer {read}"})
                assert r.status_code == 403, (method, path, r.status_code)
    assert checked >= 15


def test_revoked_token_stops_working(api):
    created = api.http.post("/v1/tokens", json={"scope": "read"}).json()
    h = {"Authorization": f"Bearer {created['token']}"}
    assert httpx.get(api.url + "/v1/jobs", headers=h).status_code == 200
    assert api.http.delete(f"/v1/tokens/{created['id']}").status_code == 200
    time.sleep(0.6)  # the token cache's time to live in the tests
    assert httpx.get(api.url + "/v1/jobs", headers=h).status_code == 401
    listed = {t["id"]: t for t in api.http.get("/v1/tokens").json()}
    assert listed[created["id"]]["revoked_at"] and listed[created["id"]]["token"] is None


def test_submit_is_idempotent(api):
    key = f"ci-{time.time()}"
    first = api.submit(SPEC, key=key, expect=201)
    again = api.submit(SPEC, key=key, expect=200)
    assert again["id"] == first["id"]
    # same content as YAML, keys in another order: the same request
    yaml_body = "stages:\n- kind: train\n  config: {steps: 3}\nlabels: {team: nlp}\nname: api-job\n"
    r = api.http.post("/v1/jobs", content=yaml_body, headers={"Idempotency-Key": key,
                                                              "Content-Type": "application/yaml"})
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    r = api.http.post("/v1/jobs", json={**SPEC, "name": "other"}, headers={"Idempotency-Key": key})
    assert r.status_code == 409 and first["id"] in r.json()["detail"]
    # without a key every submission is a new job
    assert api.submit(SPEC)["id"] != api.submit(SPEC)["id"]


def test_concurrent_submissions_with_one_key_create_one_job(api):
    key = f"race-{time.time()}"
    before = count_jobs(api)
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: api.http.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": key}),
                                range(32)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(200) == 31, codes
    assert len({r.json()["id"] for r in answers}) == 1
    assert count_jobs(api) == before + 1


def test_first_attempt_and_event_exist_when_201_returns(api):
    job = api.submit(SPEC)
    assert job["status"] == "queued" and [a["number"] for a in job["attempts"]] == [1]
    events = api.http.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["type"] for e in events] == ["submitted"]


@pytest.mark.parametrize("body,ctype,field,status", [
    (b'{"name": "x", "stages": [', "application/json", "(body)", 422),
    (b'{"name": "x", "stages": [{"kind": "train", "config": {"steps": -3}}]}', "application/json",
     "stages.0.config.steps", 422),
    (b'{"name": "x", "stages": [{"kind": "train", "config": {"source": "/etc/passwd"}}]}', "application/json",
     "stages.0.config.source", 422),
    (b'{"name": "x", "stages": [{"kind": "train"}], "oops": 1}', "application/json", "oops", 422),
    (b'{"name": 5, "stages": [{"kind": "train"}]}', "application/json", "name", 422),
    (b"name: x\nstages: [{kind: train, config: {steps: many}}]\n", "application/yaml", "stages.0.config.steps", 422),
    (b"[1, 2]", "application/json", "(body)", 422),
])
def test_bad_input_is_a_4xx_naming_the_field_and_stores_nothing(api, body, ctype, field, status):
    before = count_jobs(api)
    r = api.http.post("/v1/jobs", content=body, headers={"Content-Type": ctype, "Idempotency-Key": f"bad-{time.time()}"})
    assert r.status_code == status, r.text
    assert field in [d["field"] for d in r.json()["errors"]], r.json()
    problem = r.json()  # RFC 9457
    assert r.headers["content-type"] == "application/problem+json"
    assert (problem["type"], problem["title"], problem["status"]) == ("urn:tinyforge:problem:validation",
                                                                      "Unprocessable Entity", 422)
    assert field in problem["detail"] and problem["instance"] == "/v1/jobs"
    assert count_jobs(api) == before


def test_oversized_body_is_413(api):
    big = b'{"name": "x", "labels": {"a": "' + b"x" * (2 << 20) + b'"}}'
    r = api.http.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["errors"][0]["msg"]

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(40):
            yield b"x" * 65536
    r = api.http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_bad_query_parameters_are_422(api):
    for params in ({"limit": 0}, {"status": "sleeping"}, {"limit": "ten"}):
        r = api.http.get("/v1/jobs", params=params)
        assert r.status_code == 422 and r.json()["errors"][0]["field"], (params, r.text)
    assert api.http.get("/v1/jobs/nope").status_code == 404
    assert api.http.get("/v1/jobs/nope/metrics").status_code == 404
    assert api.http.get("/v1/stages/nope/lineage").status_code == 404
    assert api.http.get("/v1/runs/nope/lineage").status_code == 404  # the old path, kept for one release
    assert api.http.get("/v1/artifacts/nope/download").status_code == 404


def test_plan_validates_without_storing(api):
    before = count_jobs(api)
    body = {"name": "p", "stages": [stage("train", steps=2), stage("export", echo="${stages.train.run_dir}")]}
    r = api.http.post("/v1/jobs:plan", json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert [(s["name"], s["command"]) for s in plan["stages"]] == [("train", "train"), ("export", "export-hf")]
    assert plan["stages"][1]["references"] == ["stages.train.run_dir"]
    assert plan["stages"][0]["config"]["step_time"] == 0.02  # validated and normalised with defaults
    assert plan["schedulable"] is False and "no worker is running" in plan["reason"]
    assert plan["reason_code"] == "no_worker"
    assert api.http.post("/v1/jobs:plan", json={"name": "p", "stages": [{"kind": "nope"}]}).status_code == 422
    assert count_jobs(api) == before


def test_list_filters_and_cursor_pagination(api):
    tag = f"t{int(time.time() * 1000)}"
    ids = [api.submit({**SPEC, "name": f"{tag}-{i}", "labels": {"batch": tag, "parity": str(i % 2)}})["id"]
           for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"label": f"batch={tag}", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.http.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]  # newest first, each once
    odd = api.http.get("/v1/jobs", params=[("label", f"batch={tag}"), ("label", "parity=1")]).json()["items"]
    assert sorted(j["id"] for j in odd) == sorted(ids[1::2])
    named = api.http.get("/v1/jobs", params={"name": f"{tag}-*"}).json()["items"]
    assert len(named) == 5
    assert api.http.get("/v1/jobs", params={"name": f"{tag}-3"}).json()["items"][0]["id"] == ids[3]
    assert all(j["status"] == "queued" for j in api.http.get("/v1/jobs", params={"status": "queued"}).json()["items"])


def test_queued_jobs_always_say_why(api):
    job = api.submit({**SPEC, "resources": {"backend": "npu", "devices_per_node": 8}})
    assert "no worker is running" in job["pending_reason"]
    listed = api.http.get("/v1/jobs", params={"status": "queued", "limit": 500}).json()["items"]
    assert listed and all(j["pending_reason"] for j in listed)


def test_queue_time_limit_fails_the_job_with_its_reason(api):
    job = api.submit({**SPEC, "resources": {"queue_time_limit": 1}})
    done = api.wait(job["id"], timeout=15)
    assert done["status"] == "failed" and done["failure_class"] == "user"
    assert "queue_time_limit" in done["failure_reason"] and "no worker is running" in done["failure_reason"]


def test_cancel_and_retry_a_queued_job(api):
    job = api.submit(SPEC)
    r = api.http.post(f"/v1/jobs/{job['id']}:cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert all(s["status"] == "cancelled" for s in r.json()["stages"])
    again = api.http.post(f"/v1/jobs/{job['id']}:cancel")  # idempotent: the ended job, as it is
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert again.json()["updated_at"] == r.json()["updated_at"]
    r = api.http.post(f"/v1/jobs/{job['id']}:retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert [a["status"] for a in r.json()["attempts"]] == ["cancelled", "queued"]
    refused = api.http.post(f"/v1/jobs/{job['id']}:retry")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {"type": "about:blank", "title": "Conflict", "status": 409, "instance":
                              f"/v1/jobs/{job['id']}:retry", "detail": refused.json()["detail"]}
    assert "only failed or cancelled jobs" in refused.json()["detail"]
    types = [e["type"] for e in api.http.get(f"/v1/jobs/{job['id']}/events").json()]
    assert types == ["submitted", "cancelled", "retried"]


def test_health_ready_metrics_openapi(api):
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(api.url + "/readyz").json()["status"] == "ready"
    text = api.http.get("/metrics").text
    assert re.search(r'^tinyforge_jobs\{status="queued"\} \d+\.0$', text, re.M)
    assert "tinyforge_queue_depth" in text and "tinyforge_http_request_duration_seconds_bucket" in text
    assert re.search(r'^tinyforge_http_requests_total\{method="GET",route="/v1/jobs/\{job_id\}",status="404"\} '
                     r'\d', text, re.M)  # the route template, never the raw path
    assert re.search(r'^tinyforge_build_info\{python="[\d.]+",schema="\w+",version="[^"]+"\} 1\.0$', text, re.M)
    assert re.search(r"^process_resident_memory_bytes \S+$", text, re.M) and "_created" not in text
    om = api.http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n") and "tinyforge_workers_alive" in om.text
    schema = api.http.get("/openapi.json").json()
    assert "JobSpec" in schema["components"]["schemas"]
    assert "/v1/jobs:plan" in schema["paths"] and "/v1/stages/{stage_id}/lineage" in schema["paths"]
    assert schema["paths"]["/v1/runs/{run_id}/lineage"]["get"]["deprecated"] is True
    assert "deprecated" not in schema["paths"]["/v1/stages/{stage_id}/lineage"]["get"]


def test_answers_are_the_response_models_and_only_what_each_view_fills(api):
    """A listed job is the summary (no attempts, spec or stage configs); a shown one has them all; both
    parse as schemas.JobOut, the model the server built them from (and service.client returns)."""
    job = api.submit({**SPEC, "name": f"shape-{time.time()}"})
    assert "attempts" in job and "spec" not in job and "config" not in job["stages"][0]  # the submit answer
    listed = api.http.get("/v1/jobs", params={"name": job["name"]}).json()["items"][0]
    assert {"attempts", "spec", "webhook_url", "comparison"}.isdisjoint(listed)
    assert {"config", "run_dir", "summary", "inputs"}.isdisjoint(listed["stages"][0])
    shown = api.http.get(f"/v1/jobs/{job['id']}").json()
    assert {"attempts", "spec", "webhook_url", "comparison"} <= set(shown)
    assert {"config", "run_dir", "summary", "inputs"} <= set(shown["stages"][0])
    for body in (listed, shown):
        assert schemas.JobOut.model_validate(body).model_dump(mode="json", exclude_unset=True) == body
