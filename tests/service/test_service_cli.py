"""The CLI against a real `serve` (embedded worker): `jobs submit --wait` exit codes for CI, tokens."""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.support.service import REPO, Service, stage


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with Service.on_sqlite(tmp_path_factory.mktemp("cli"), embedded_worker=True) as svc:
        yield svc


def cli(svc, *args, token=None):
    env = {**svc.env, "TINYFORGE_URL": svc.url, "TINYFORGE_TOKEN": token or svc.token}
    return subprocess.run([sys.executable, "-m", "tinyforge.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def spec_file(tmp_path, name, **config):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": [stage("train", **config)]}))
    return path


def test_submit_wait_exit_code_follows_the_job(served, tmp_path):
    ok = cli(served, "jobs", "submit", str(spec_file(tmp_path, "ok", steps=3)), "--wait", "--follow",
             "--idempotency-key", "commit-abc")
    assert ok.returncode == 0, ok.stderr
    job_id = ok.stdout.splitlines()[0]
    assert "[train] step 3 loss" in ok.stdout and "succeeded" in ok.stderr
    again = cli(served, "jobs", "submit", str(spec_file(tmp_path, "ok", steps=3)), "--wait",
                "--idempotency-key", "commit-abc")
    assert again.returncode == 0 and again.stdout.splitlines()[0] == job_id
    assert "already submitted with this key" in again.stderr
    bad = cli(served, "jobs", "submit", str(spec_file(tmp_path, "bad", exit_code=2)), "--wait")
    assert bad.returncode == 1 and "error: failing on purpose" in bad.stderr
    refused = cli(served, "jobs", "submit", str(spec_file(tmp_path, "refused", steps=-1)), "--wait")
    assert refused.returncode == 2 and "stages.0.config.steps" in refused.stderr


def test_ls_show_logs_cancel_retry(served, tmp_path):
    out = cli(served, "jobs", "submit", str(spec_file(tmp_path, "long", steps=100_000, step_time=0.05)))
    job_id = out.stdout.strip()
    served.wait(job_id, lambda j: j["status"] == "running")
    assert job_id in cli(served, "jobs", "ls", "--status", "running").stdout
    assert cli(served, "jobs", "cancel", job_id).returncode == 0
    assert served.wait(job_id)["status"] == "cancelled"
    shown = cli(served, "jobs", "show", job_id).stdout
    assert "cancelled" in shown and "attempt 1" in shown
    assert "stopped by SIGTERM" in cli(served, "jobs", "logs", job_id).stdout
    assert cli(served, "jobs", "retry", job_id).returncode == 0
    assert served.job(job_id)["status"] in ("queued", "running")
    cli(served, "jobs", "cancel", job_id)
    assert cli(served, "jobs", "show", "nope").returncode == 1


def test_token_create_prints_a_working_token(served):
    made = cli(served, "token", "create", "--scope", "read", "--name", "dash")
    assert made.returncode == 0
    token = made.stdout.strip()
    assert token.startswith("tf_")
    h = {"Authorization": f"Bearer {token}"}
    assert httpx.get(served.url + "/v1/jobs", headers=h).status_code == 200
    assert httpx.post(served.url + "/v1/jobs", headers=h, json={}).status_code == 403
    listed = cli(served, "token", "list").stdout
    assert "dash" in listed and token not in listed
    db = sqlite3.connect(served.db_url.split("///", 1)[1])
    stored = db.execute("SELECT * FROM api_tokens").fetchall()
    assert not any(token in str(v) for row in stored for v in row)  # only the hash is stored
    assert hashlib.sha256(token.encode()).hexdigest() in {row[2] for row in stored}
    assert cli(served, "token", "create", "--scope", "root").returncode == 2


def test_version_is_the_installed_distributions():
    from importlib import metadata
    r = subprocess.run([sys.executable, "-m", "tinyforge.cli", "--version"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"tinyforge, version {metadata.version('tinyforge')}", r


def test_a_bad_setting_names_the_variable_and_what_it_expected(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TINYFORGE_HOME": str(tmp_path), "TINYFORGE_POLL_S": "fast"}
    r = subprocess.run([sys.executable, "-m", "tinyforge.cli", "worker"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r
    assert "TINYFORGE_POLL_S: Input should be a valid number" in r.stderr and "'fast'" in r.stderr, r.stderr
