"""Fixtures of the hostile-input tests: the real `tinyforge serve` of tests/service (Service, on a SQLite
file or a throw-away PostgreSQL schema), tokens of each scope, and the dashboard tests' chromium."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# test modules import these helpers as `security_fixtures` (a bare `conftest` is ambiguous)
if __name__ in sys.modules:
    sys.modules.setdefault("security_fixtures", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load(name: str, path: Path):
    """A conftest.py of another test directory under its own module name (a bare `conftest` import
    resolves to whichever conftest.py was imported last)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


svc_fixtures = _load("service_test_fixtures", REPO / "tests" / "service" / "conftest.py")
Service, stage, free_port = svc_fixtures.Service, svc_fixtures.stage, svc_fixtures.free_port
db_url = svc_fixtures.db_url  # fixture: "sqlite" and "postgresql" (skipped without a server)
record = _load("chaos_record", REPO / "tests" / "chaos_record.py").record  # figures for bench/chaos_report.py
dash_fixtures = _load("dashboard_test_fixtures", REPO / "tests" / "dashboard" / "conftest.py")
chromium, browser = dash_fixtures.chromium, dash_fixtures.browser  # fixtures: Debian's chromium via Playwright
# engine stand-in that prints and records whatever text a job's config asks for (log lines, errors, artifacts)
HOSTILE_ENGINE = f"{sys.executable} {HERE / 'hostile_engine.py'}"


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_token(svc, scope: str, name: str = "") -> dict:
    """{"id", "token", ...} of a fresh token of `scope`, created through the API with the admin token."""
    r = svc.http.post("/v1/tokens", json={"scope": scope, "name": name or f"test-{scope}"})
    assert r.status_code == 201, r.text
    return r.json()


class VerboseService(Service):
    """A `tinyforge serve` with its embedded worker, logging at DEBUG (the most it ever writes)."""

    def __init__(self, home: Path, db_url: str, **env):
        self.home, self.db_url = Path(home), db_url
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = svc_fixtures.base_env(self.home, db_url, **env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = []
        self._log = open(self.home / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyforge.cli", "serve", "--port", str(self.port),
                                      "--worker", "--devices", "cpu=1", "--log-level", "debug"],
                                     env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("serve did not start:\n" + (self.home / f"serve-{self.port}.log").read_text())
            time.sleep(0.1)
        self.token = (self.home / "admin.token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers=bearer(self.token), timeout=30)


@pytest.fixture
def sqlite_service(tmp_path):
    """A fresh server (no worker) on its own SQLite file."""
    svc = Service(tmp_path / "home", f"sqlite:///{tmp_path / 'tinyforge.db'}")
    yield svc
    svc.close()


@pytest.fixture
def any_service(db_url, tmp_path):
    """A fresh server (no worker) on SQLite and on PostgreSQL."""
    svc = Service(tmp_path / "home", db_url)
    yield svc
    svc.close()


@pytest.fixture
def verbose_service(db_url, tmp_path):
    """A fresh server with its embedded worker, logging at DEBUG, on SQLite and on PostgreSQL."""
    svc = VerboseService(tmp_path / "home", db_url)
    yield svc
    svc.close()


def get(svc, path: str, token: str | None, **kw) -> httpx.Response:
    return httpx.get(svc.url + path, headers=bearer(token), timeout=30, **kw)
