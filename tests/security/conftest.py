"""Fixtures of the hostile-input tests: the real `tinyforge serve` of tests/service (Service, on a SQLite
file or a throw-away PostgreSQL schema), tokens of each scope (the browser fixtures are in tests/conftest.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.fixture_modules import load as _load

# test modules import these helpers as `security_fixtures` (a bare `conftest` is ambiguous)
if __name__ in sys.modules:
    sys.modules.setdefault("security_fixtures", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

svc_fixtures = _load("service_test_fixtures", REPO / "tests" / "service" / "conftest.py")
Service, stage, free_port = svc_fixtures.Service, svc_fixtures.stage, svc_fixtures.free_port
db_url = svc_fixtures.db_url  # fixture: "sqlite" and "postgresql" (skipped without a server)
record = _load("chaos_record", REPO / "tests" / "chaos_record.py").record  # figures for bench/chaos_report.py
# engine stand-in that prints and records whatever text a job's config asks for (log lines, errors, artifacts)
HOSTILE_ENGINE = f"{sys.executable} {REPO / 'tests' / 'support' / 'fake_engine.py'} --hostile"


def data_home(tmp: Path, corpus_text: str) -> tuple[Path, Path]:
    """(home, outside): a data root holding corpus/a.txt, and a directory beside it with a file the jobs
    must never reach (outside/secret.txt)."""
    home, outside = tmp / "home", tmp / "outside"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "a.txt").write_text(corpus_text)
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours\n")
    return home, outside


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_token(svc, scope: str, name: str = "") -> dict:
    """{"id", "token", ...} of a fresh token of `scope`, created through the API with the admin token."""
    r = svc.http.post("/v1/tokens", json={"scope": scope, "name": name or f"test-{scope}"})
    assert r.status_code == 201, r.text
    return r.json()


def debug_logging_service(home: Path, db_url: str, **env) -> Service:
    """A `tinyforge serve` with its embedded worker, logging at DEBUG (the most it ever writes)."""
    return Service(home, db_url, embedded_worker=True, log_level="debug", serve_args=("--devices", "cpu=1"), **env)


@pytest.fixture
def sqlite_service(tmp_path):
    """A fresh server (no worker) on its own SQLite file."""
    with Service.on_sqlite(tmp_path) as svc:
        yield svc


@pytest.fixture
def any_service(db_url, tmp_path):
    """A fresh server (no worker) on SQLite and on PostgreSQL."""
    svc = Service(tmp_path / "home", db_url)
    yield svc
    svc.close()


@pytest.fixture
def verbose_service(db_url, tmp_path):
    """A fresh server with its embedded worker, logging at DEBUG, on SQLite and on PostgreSQL."""
    svc = debug_logging_service(tmp_path / "home", db_url)
    yield svc
    svc.close()


def get(svc, path: str, token: str | None, **kw) -> httpx.Response:
    return httpx.get(svc.url + path, headers=bearer(token), timeout=30, **kw)
