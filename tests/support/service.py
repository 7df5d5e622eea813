"""The service harness of the service-level tests (tests/service, tests/chaos, tests/dashboard,
tests/slurm, tests/security): real databases (a SQLite file; a throw-away schema on the PostgreSQL server
at 127.0.0.1:5432, or $TINYFORGE_TEST_PG), a real `tinyforge serve` on a loopback port, and real
`tinyforge worker` processes running the one fake engine (fake_engine.py) as stage subprocesses.

The fixtures here (db_url, module_db_url, service, api) are made available to a test directory by
importing them into its conftest.py."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import fake_specs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable
FAKE_ENGINE = f"{PY} {HERE / 'fake_engine.py'}"  # the engine command of every Service unless told otherwise
PG_SERVER = os.environ.get("TINYFORGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TERMINAL = ("succeeded", "failed", "cancelled")


def pg_reason() -> str | None:
    try:
        import psycopg
        with psycopg.connect(PG_SERVER, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_SERVER}: {exc}"


_PG_REASON = pg_reason()


def make_pg_schema() -> tuple[str, str]:
    import psycopg
    schema = f"tf_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"{PG_SERVER}?options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    import psycopg
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _db_url(kind: str, tmp: Path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'tinyforge.db'}"
        return
    if _PG_REASON:
        pytest.skip(_PG_REASON)
    schema, url = make_pg_schema()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    yield from _db_url(request.param, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db_url(request, tmp_path_factory):
    yield from _db_url(request.param, tmp_path_factory.mktemp("db"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path, db_url: str, **extra) -> dict:
    env = {**os.environ,
           "TINYFORGE_HOME": str(home), "TINYFORGE_DATABASE_URL": db_url,
           "PYTHONPATH": str(REPO),  # tests.support.* and engine.* for the server, workers and fake engine
           "TINYFORGE_STAGE_SPECS": f"{fake_specs.NAME}:STAGE_SPECS",
           "TINYFORGE_ENGINE_COMMAND": FAKE_ENGINE,
           "TINYFORGE_LEASE_S": "3", "TINYFORGE_HEARTBEAT_S": "0.3", "TINYFORGE_POLL_S": "0.2",
           "TINYFORGE_HOUSEKEEPING_S": "0.5", "TINYFORGE_CANCEL_GRACE_S": "3", "TINYFORGE_WORKER_TIMEOUT_S": "5",
           "TINYFORGE_TOKEN_CACHE_S": "0.5", "TINYFORGE_DATA_ROOTS": f"{home}:{REPO / 'data' / 'sample'}"}
    env.pop("TINYFORGE_TOKEN", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Service:
    """A `tinyforge serve` subprocess and the workers started for it."""

    def __init__(self, home: Path, db_url: str, embedded_worker: bool = False, log_level: str = "warning",
                 serve_args: tuple[str, ...] = (), **env):
        self.home, self.db_url = Path(home), db_url
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = base_env(self.home, db_url, **env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []
        self._log = open(self.home / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen([PY, "-m", "tinyforge.cli", "serve", "--port", str(self.port),
                                      "--worker" if embedded_worker else "--no-worker", "--log-level", log_level,
                                      *serve_args],
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
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    @classmethod
    def on_sqlite(cls, root: Path, **kw) -> "Service":
        """A server whose home and SQLite file both live under `root`."""
        return cls(Path(root) / "home", f"sqlite:///{Path(root) / 'tinyforge.db'}", **kw)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker(self, name: str | None = None, devices: str = "cpu=2", **env) -> subprocess.Popen:
        name = name or f"w{len(self.workers)}"
        log = open(self.home / f"worker-{name}.log", "ab")
        p = subprocess.Popen([PY, "-m", "tinyforge.cli", "worker", "--id", name, "--devices", devices,
                              "--log-level", "info"], env={**self.env, **{k: str(v) for k, v in env.items()}},
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(p)
        return p

    def submit(self, spec: dict, key: str | None = None, expect: int = 201) -> dict:
        headers = {"Idempotency-Key": key} if key else {}
        r = self.http.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == expect, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until=lambda j: j["status"] in TERMINAL, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting on job {job_id}: {job}\n" + self.logs_of_workers())
            time.sleep(0.1)

    def logs_of_workers(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in self.home.glob("worker-*.log"))

    def close(self) -> None:
        for p in self.workers + [self.proc]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers + [self.proc]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.http.close()
        self._log.close()


@pytest.fixture
def service(db_url, tmp_path):
    svc = Service(tmp_path / "home", db_url)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def api(module_db_url, tmp_path_factory):
    """One server (no worker) shared by a module's API tests."""
    svc = Service(tmp_path_factory.mktemp("home"), module_db_url)
    yield svc
    svc.close()


def stage(kind: str = "train", name: str | None = None, **config) -> dict:
    out = {"kind": kind, "config": config}
    if name:
        out["name"] = name
    return out
