"""Schemathesis (the `st` command) against the OpenAPI spec a real `tinyforge serve` publishes, every
operation, with no token, a read token and an admin token, each on its own fresh server and database
(SQLite; the read and admin runs on PostgreSQL too). Checks: no 5xx, and every answer's status code,
content type and body are the ones the spec declares. The server is seeded first with a finished job
(artifacts, logs, metrics), a failed one and a cancelled one, so the fuzzer reaches real objects through
the ids that listings return.

The admin run fuzzes `DELETE /v1/tokens/{token_id}` last, in a second pass of its own: revoking the
fuzzer's own token mid-run would turn every later case into a 401 and hide the rest of the API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from security_fixtures import Service, new_token, record, stage, svc_fixtures

ST = Path(sys.executable).with_name("st")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLES = int(os.environ.get("TINYFORGE_FUZZ_EXAMPLES", "8"))  # per operation and phase; ~1200 cases a run
SEED = int(os.environ.get("TINYFORGE_FUZZ_SEED", "20261129"))
# A log follower of a job still running or queued is a stream that stays open; the fuzzer reads each for
# this long and moves on (a fuzzed job is never run: the seeding worker is gone by then).
CONFIG = """request-timeout = 20
[[operations]]
include-path = "/v1/jobs/{job_id}/logs"
request-timeout = 1
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ST.exists(), reason="schemathesis is in the dev extra: pip install -e '.[dev]'")]


def seed(svc: Service) -> dict:
    """A succeeded job (two stages, artifacts, logs, metrics), a failed one and a cancelled one."""
    worker = svc.worker("seed")
    ok = svc.submit({"name": "seed-ok", "labels": {"team": "fuzz", "env": "ci"},
                     "stages": [stage("train", steps=3, lines=3), stage("export", name="exp", steps=1,
                                artifacts=[{"name": "notes.txt", "type": "text"}])]})
    bad = svc.submit({"name": "seed-failed", "stages": [stage("train", steps=3, exit_code=2, fail_at=1)]})
    svc.wait(ok["id"], timeout=90)
    svc.wait(bad["id"], timeout=90)
    worker.terminate()
    worker.wait(30)
    gone = svc.submit({"name": "seed-cancelled", "stages": [stage("train", steps=3)]})
    assert svc.http.post(f"/v1/jobs/{gone['id']}:cancel").status_code == 200
    return {"ok": svc.job(ok["id"]), "failed": svc.job(bad["id"])}


def run_st(svc: Service, token: str | None, out: Path, name: str, *filters: str) -> dict:
    """One `st run`; returns its JSON report plus the interactions counted from its NDJSON events."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "schemathesis.toml"
    config.write_text(CONFIG)
    report, events = out / f"{name}.json", out / f"{name}.ndjson"
    cmd = [str(ST), "--config-file", str(config), "run", f"{svc.url}/openapi.json", "--checks", CHECKS,
           "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--no-shrink", "--workers", "1",
           "--report", "json,ndjson", "--report-json-path", str(report), "--report-ndjson-path", str(events),
           "--output-truncate", "true", *filters]
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out)
    (out / f"{name}.out").write_text(proc.stdout + proc.stderr)
    assert report.exists(), f"st run wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    result = json.loads(report.read_text())
    statuses: Counter = Counter()
    for line in events.read_text().splitlines():
        for interaction in _interactions(json.loads(line)):
            statuses[interaction["response"]["status_code"]] += 1
    result["statuses"], result["output"] = statuses, proc.stdout[-6000:]
    return result


def _interactions(node):
    if isinstance(node, dict):
        if isinstance(node.get("request"), dict) and isinstance(node.get("response"), dict):
            yield node
            return
        for v in node.values():
            yield from _interactions(v)
    elif isinstance(node, list):
        for v in node:
            yield from _interactions(v)


@pytest.fixture
def fuzz_db(request, tmp_path):
    yield from svc_fixtures._db_url(request.param, tmp_path)  # a SQLite file, or a throw-away PostgreSQL schema


# PostgreSQL refuses some text SQLite stores (a NUL character): the modes that reach the database run on both
@pytest.mark.parametrize("auth,fuzz_db", [("none", "sqlite"), ("read", "sqlite"), ("admin", "sqlite"),
                                          ("read", "postgresql"), ("admin", "postgresql")], indirect=["fuzz_db"])
def test_fuzzed_api_has_no_5xx_and_matches_its_schema(auth, fuzz_db, tmp_path):
    started = time.monotonic()
    db = "sqlite" if fuzz_db.startswith("sqlite") else "postgresql"
    svc = Service(tmp_path / "home", fuzz_db)
    try:
        seed(svc)
        out = tmp_path / "st"
        token = {"none": None, "read": new_token(svc, "read")["token"], "admin": svc.token}[auth]
        if auth == "admin":
            runs = [run_st(svc, token, out, "main", "--exclude-path", "/v1/tokens/{token_id}"),
                    run_st(svc, token, out, "revoke", "--include-path-regex", "^/v1/tokens")]
        else:
            runs = [run_st(svc, token, out, "main")]
    finally:
        svc.close()
    cases = sum(r["test_cases"]["generated"] for r in runs)
    statuses = sum((r["statuses"] for r in runs), Counter())
    failures = [f for r in runs for f in r["failures"]]
    errors = [e for r in runs for e in r["errors"]]
    http_5xx = sum(n for code, n in statuses.items() if code >= 500)
    violations = sum(f["count"] for f in failures if f["type"] != "ServerError")
    passed = not failures and not errors and http_5xx == 0
    record(f"schemathesis_{auth}" + ("" if db == "sqlite" else f"_{db}"), fault="schemathesis fuzzing of every "
           f"operation ({'no token' if auth == 'none' else auth + ' token'}, {db})", fuzz_cases=cases,
           duration_s=round(time.monotonic() - started, 1),
           requests=sum(statuses.values()), http_5xx=http_5xx, schema_violations=violations,
           statuses={str(k): v for k, v in sorted(statuses.items())}, passed=passed)
    summary = "\n".join(r["output"] for r in runs)
    assert cases >= 300, summary
    assert sum(r["operations"]["tested"] for r in runs) >= 19, summary
    assert http_5xx == 0, summary
    assert not failures and not errors, summary
    if auth == "none":  # nothing but health answers without a token
        assert set(statuses) <= {200, 401, 405, 503}, statuses
    else:
        assert statuses[200] > 50, statuses  # the fuzzer got past auth and reached real objects
