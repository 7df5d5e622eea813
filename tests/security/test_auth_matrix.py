"""Who may call what, against a real server: every operation of the live OpenAPI spec (plus /metrics and
the dashboard) with no token, a wrong token, a revoked token and each scope. Tokens are stored as
sha256 hashes and never written anywhere: after a session of calls and jobs run by the embedded worker,
the server's output at DEBUG level, every file of its home (run directories and stage logs included)
and every row of every table (SQLite and PostgreSQL) are searched for each token string."""
from __future__ import annotations

import hashlib
import re
import sqlite3
import time

import httpx

from security_fixtures import bearer, new_token, stage

PUBLIC = {("get", "/healthz"), ("get", "/readyz")}
# the scope each operation needs; an operation missing here (a new route) fails the test until it is added
SCOPE = {
    ("get", "/metrics"): "read",
    ("post", "/v1/jobs"): "submit",
    ("get", "/v1/jobs"): "read",
    ("post", "/v1/jobs:plan"): "submit",
    ("get", "/v1/jobs/{job_id}"): "read",
    ("post", "/v1/jobs/{job_id}:cancel"): "submit",
    ("post", "/v1/jobs/{job_id}:retry"): "submit",
    ("get", "/v1/jobs/{job_id}/events"): "read",
    ("get", "/v1/jobs/{job_id}/logs"): "read",
    ("get", "/v1/jobs/{job_id}/metrics"): "read",
    ("get", "/v1/jobs/{job_id}/artifacts"): "read",
    ("get", "/v1/stages/{stage_id}/lineage"): "read",
    ("get", "/v1/runs/{run_id}/lineage"): "read",
    ("get", "/v1/artifacts/{artifact_id}/download"): "read",
    ("get", "/v1/workers"): "read",
    ("post", "/v1/tokens"): "admin",
    ("get", "/v1/tokens"): "admin",
    ("delete", "/v1/tokens/{token_id}"): "admin",
    ("get", "/v1/whoami"): "read",
}
SCOPES = ("read", "submit", "admin")
SPEC = {"name": "auth-job", "stages": [stage("train", steps=2)]}


def operations(svc) -> list[tuple[str, str]]:
    spec = httpx.get(svc.url + "/openapi.json", timeout=30).json()
    ops = [(m, p) for p, methods in spec["paths"].items() for m in methods]
    if ("get", "/metrics") not in ops:
        ops.append(("get", "/metrics"))
    return ops


def call(svc, method: str, path: str, token: str | None, good_body: bool = False, job_id: str = "j0",
         authorization: str | None = None) -> httpx.Response:
    """The operation with a bad body and a bad query string unless `good_body`: the token is checked first.
    `authorization` replaces the whole Authorization header."""
    url = re.sub(r"\{job_id\}", job_id, path)
    url = re.sub(r"\{[^}]+\}", "x0", url)
    kw: dict = {"params": {"limit": "not-a-number"}} if not good_body else {}
    if method in ("post", "put", "patch"):
        body = {"scope": "read"} if path == "/v1/tokens" else SPEC
        kw["json" if good_body else "content"] = body if good_body else b"{not json"
        if not good_body:
            kw["headers"] = {"content-type": "application/json"}
    headers = {**kw.pop("headers", {}), **bearer(token)}
    if authorization is not None:
        headers["Authorization"] = authorization
    return httpx.request(method.upper(), svc.url + url, headers=headers, timeout=30, **kw)


def test_every_operation_checks_the_token_before_anything_else(sqlite_service):
    svc = sqlite_service
    ops = operations(svc)
    assert {op for op in ops if op not in PUBLIC} == set(SCOPE), "a route without an entry in SCOPE (or one gone)"
    tokens = {scope: new_token(svc, scope) for scope in SCOPES}
    victim = new_token(svc, "admin", "to-be-revoked")
    assert httpx.get(svc.url + "/v1/whoami", headers=bearer(victim["token"])).status_code == 200
    assert svc.http.delete(f"/v1/tokens/{victim['id']}").status_code == 200
    time.sleep(1.0)  # > TINYFORGE_TOKEN_CACHE_S of the test server
    job = svc.submit(SPEC)
    checked = 0
    for method, path in ops:
        if (method, path) in PUBLIC:
            assert call(svc, method, path, None, good_body=True).status_code == 200
            continue
        needed = SCOPE[(method, path)]
        for label, header in (("no token", None), ("empty", "Bearer"), ("wrong", "Bearer tf_" + "A" * 43),
                              ("basic auth", "Basic Zm9vOmJhcg=="), ("revoked admin", f"Bearer {victim['token']}")):
            r = call(svc, method, path, None, authorization=header)
            assert r.status_code == 401, (method, path, label, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer", (method, path, label)
            assert r.json()["detail"] and "Traceback" not in r.text
        for scope in SCOPES:
            allowed = SCOPES.index(scope) >= SCOPES.index(needed)
            r = call(svc, method, path, tokens[scope]["token"])
            if allowed:  # past the token check: now the bad body / query string is what is refused
                assert r.status_code not in (401, 403), (method, path, scope, r.status_code, r.text)
            else:
                assert r.status_code == 403, (method, path, scope, r.status_code, r.text)
                assert needed in r.json()["detail"]
        checked += 1
    assert checked == len(SCOPE)
    # nothing was done by the refused calls: one job (ours), nothing cancelled, no token created
    listed = svc.http.get("/v1/jobs").json()["items"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["status"] == "queued"
    assert len(svc.http.get("/v1/tokens").json()) == 1 + len(SCOPES) + 1  # bootstrap, three, the revoked one


def test_whoami_names_the_caller(sqlite_service):
    svc = sqlite_service
    for scope in SCOPES:
        t = new_token(svc, scope, f"ci {scope}")
        r = httpx.get(svc.url + "/v1/whoami", headers=bearer(t["token"]), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json() == {"token_id": t["id"], "name": f"ci {scope}", "scope": scope}
    assert httpx.get(svc.url + "/v1/whoami", timeout=30).status_code == 401


def test_dashboard_is_public_static_files_only(sqlite_service):
    """/ui/ has to load without a token (it is where one signs in); it serves files of the package, no data."""
    svc = sqlite_service
    job = svc.submit({**SPEC, "name": "secret-project-x"})
    for path in ("/ui/", "/ui/index.html", "/ui/js/app.js"):
        r = httpx.get(svc.url + path, timeout=30)
        assert r.status_code == 200
        assert "secret-project-x" not in r.text and job["id"] not in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(svc.url + "/ui/../service/settings.py", timeout=30).status_code == 404
    assert httpx.get(svc.url + "/ui/%2e%2e/%2e%2e/pyproject.toml", timeout=30).status_code == 404


def _db_text(db_url: str) -> str:
    """Every row of every table, as text."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("///", 1)[1])
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    import psycopg
    with psycopg.connect(db_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        assert "api_tokens" in tables and "log_lines" in tables and "events" in tables
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def test_tokens_are_stored_hashed_and_never_written_anywhere(verbose_service):
    svc = verbose_service
    made = {scope: new_token(svc, scope) for scope in SCOPES}
    wrong = "tf_" + "Z" * 43  # an unknown token must not be logged either
    for t in [m["token"] for m in made.values()] + [wrong]:
        h = bearer(t)
        httpx.get(svc.url + "/v1/jobs", headers=h, timeout=30)
        httpx.get(svc.url + "/v1/whoami", headers=h, timeout=30)
        httpx.get(svc.url + "/metrics", headers=h, timeout=30)
        httpx.post(svc.url + "/v1/jobs", headers=h, json=SPEC, timeout=30)
        httpx.post(svc.url + "/v1/jobs", headers=h, content=b"{broken", timeout=30)
        httpx.post(svc.url + "/v1/jobs", headers=h, json={"name": t, "stages": []}, timeout=30)  # echoed errors
        httpx.post(svc.url + "/v1/tokens", headers=h, json={"scope": "root"}, timeout=30)
        httpx.delete(svc.url + "/v1/tokens/nope", headers=h, timeout=30)
    for t in [m["token"] for m in made.values()]:  # jobs submitted, run by the worker and followed with each token
        job = httpx.post(svc.url + "/v1/jobs", headers=bearer(t), json=SPEC, timeout=30)
        if job.status_code == 201:
            svc.wait(job.json()["id"], timeout=60)
            httpx.get(svc.url + f"/v1/jobs/{job.json()['id']}/logs", params={"follow": "true"}, headers=bearer(t),
                      timeout=30)
    assert svc.http.get("/v1/jobs", params={"status": "succeeded"}).json()["items"], "no job ran"
    # stored: the sha256 of each token, nothing else
    db = _db_text(svc.db_url)
    for m in made.values():
        assert hashlib.sha256(m["token"].encode()).hexdigest() in db
    svc.close()  # flush and close the server's output
    secrets = [m["token"] for m in made.values()] + [wrong, svc.token]  # svc.token: the bootstrap admin token
    secrets += [s[3:] for s in secrets]  # without the tf_ prefix too
    places = {"database rows": db}
    for f in svc.home.rglob("*"):
        if f.is_file() and f.name != "admin.token":  # where `serve` hands the bootstrap token to the CLI, 0600
            places[str(f.relative_to(svc.home))] = f.read_bytes().decode("utf-8", "replace")
    assert (svc.home / "admin.token").stat().st_mode & 0o077 == 0
    assert any(name.startswith("serve-") for name in places), "the server's stdout/stderr file"
    if svc.db_url.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):  # raw pages, freed ones included
            f = svc.db_url.split("///", 1)[1] + suffix
            try:
                places[f] = open(f, "rb").read().decode("latin-1")
            except FileNotFoundError:
                pass
    for where, text in places.items():
        for s in secrets:
            assert s not in text, f"a token is written in {where}"
