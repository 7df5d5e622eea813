"""Fixtures of the service-level fault-injection tests: the service harness of tests/support (real
`tinyforge serve` and `tinyforge worker` processes, SQLite files and throw-away PostgreSQL schemas), plus
what chaos needs on top: an API process that can be SIGKILLed and restarted on the same port, a look
at the live processes writing into a run directory, a PostgreSQL restart, a consistency check of the
whole database (no job left without an owner), and the figures each test leaves for
bench/chaos_report.py (recorded even when the test fails, with passed=false)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixture_modules import load as _load
from tests.support import service as svc_fixtures

# test modules import these helpers as `chaos_fixtures` (a bare `conftest` is ambiguous)
if __name__ in sys.modules:
    sys.modules.setdefault("chaos_fixtures", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

chaos_record = _load("chaos_record", TESTS / "chaos_record.py")
Service, base_env, stage, PY, REPO = (svc_fixtures.Service, svc_fixtures.base_env, svc_fixtures.stage,
                                      svc_fixtures.PY, svc_fixtures.REPO)
TERMINAL = ("succeeded", "failed", "cancelled")
SAMPLE = REPO / "data" / "sample"


# ------------------------------------------------------------------ databases

@pytest.fixture
def pg_url():
    if svc_fixtures._PG_REASON:
        pytest.skip(svc_fixtures._PG_REASON)
    schema, url = svc_fixtures.make_pg_schema()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):  # the server may have been restarted under us: best effort
            svc_fixtures.drop_pg_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path):
    yield from svc_fixtures._db_url(request.param, tmp_path)


def pg_cluster() -> list[str] | None:
    """`pg_ctlcluster VERSION main` of the local server, when this process may restart it."""
    etc = Path("/etc/postgresql")
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not etc.is_dir():
        return None
    versions = sorted(p.name for p in etc.iterdir() if (p / "main").is_dir())
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"] if versions else None


def pg_up(timeout: float = 60) -> bool:
    import psycopg
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with psycopg.connect(svc_fixtures.PG_SERVER, connect_timeout=2):
                return True
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    return False


class PgServer:
    """The shared local PostgreSQL server, restarted (or stopped and started) by pg_ctlcluster."""

    def __init__(self, cluster: list[str]):
        self.cluster = cluster

    def _ctl(self, action: str) -> None:
        subprocess.run([*self.cluster, action], check=True, capture_output=True, timeout=120)

    def restart(self) -> float:
        t0 = time.time()
        self._ctl("restart")
        assert pg_up(), "PostgreSQL did not come back after a restart"
        return time.time() - t0

    def stop(self) -> None:
        self._ctl("stop")

    def start(self) -> None:
        self._ctl("start")
        assert pg_up(), "PostgreSQL did not start"


@contextlib.contextmanager
def pg_restartable():
    """Yields the local PostgreSQL server to restart; whatever happens, it is running again when the
    block ends (other tests use it)."""
    cluster = pg_cluster()
    if cluster is None:
        pytest.skip("restarting PostgreSQL needs root and pg_ctlcluster")
    if os.environ.get("TINYFORGE_TEST_NO_PG_RESTART"):  # a server shared with other people's work right now
        pytest.skip("TINYFORGE_TEST_NO_PG_RESTART is set")
    try:
        yield PgServer(cluster)
    finally:
        if not pg_up(5):
            subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
            pg_up(60)


# ------------------------------------------------------------------ processes

class ChaosService(Service):
    """Service whose API process can be SIGKILLed and started again on the same port and home."""

    def kill_api(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def start_api(self) -> None:
        self.proc = subprocess.Popen([PY, "-m", "tinyforge.cli", "serve", "--port", str(self.port), "--no-worker",
                                      "--log-level", "warning"], env=self.env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("serve did not restart:\n" + (self.home / f"serve-{self.port}.log").read_text())
            time.sleep(0.05)

    def get(self, path: str, **params) -> tuple[httpx.Response | None, int]:
        """GET that rides out an API or database restart: (response, 5xx/transport errors seen)."""
        errors = 0
        deadline = time.time() + 60
        while True:
            try:
                r = self.http.get(path, params=params)
                if r.status_code < 500:
                    return r, errors
            except httpx.TransportError:
                pass
            errors += 1
            if time.time() > deadline:
                raise AssertionError(f"GET {path} kept failing")
            time.sleep(0.2)

    def close(self) -> None:
        super().close()
        for p in self.workers:  # SIGKILLed workers' stages end by themselves (checked by the tests)
            with contextlib.suppress(Exception):
                p.wait(1)


def _stat_fields(proc: Path) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses): state first, then
    the parent pid; the start time in ticks is index 19."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def processes_in(run_dir: Path) -> dict[int, float]:
    """Live (non-zombie) processes whose command line names `run_dir`: pid -> start time in ticks."""
    needle = os.fsencode(str(run_dir))
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "cmdline").read_bytes():
                continue
            stat = _stat_fields(d)
        except OSError:
            continue
        if stat[0] not in ("Z", "X"):
            out[int(d.name)] = float(stat[19])
    return out


def describe_processes(pids) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of those still there: what a failed process count was made of."""
    out = {}
    for pid in pids:
        try:
            parent = int(_stat_fields(Path(f"/proc/{pid}"))[1])
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out[pid] = (parent, line.strip()[:300])
    return out


# ------------------------------------------------------------------ database invariants

def consistency_problems(db_url: str) -> list[str]:
    """What would leave a job without an owner or half-written: a job with no stage or no attempt, gaps in
    attempt numbers, a queued job whose newest attempt is not queued, a running job without exactly one
    running attempt holding a lease, a finished job with an attempt still open, an idempotency key
    pointing nowhere, a job with two keys."""
    from sqlalchemy import select

    from service.db import Database
    from service.db.models import Attempt, Event, IdempotencyKey, Job, Stage

    db = Database(db_url)
    problems = []
    try:
        with db.read() as s:
            jobs = {j.id: j for j in s.scalars(select(Job))}
            stages: dict[str, list] = {}
            for st in s.scalars(select(Stage)):
                stages.setdefault(st.job_id, []).append(st)
            attempts: dict[str, list] = {}
            for a in s.scalars(select(Attempt).order_by(Attempt.number)):
                attempts.setdefault(a.job_id, []).append(a)
            with_events = set(s.scalars(select(Event.job_id).distinct()))
            keys = list(s.execute(select(IdempotencyKey.key, IdempotencyKey.job_id)).all())
    finally:
        db.dispose()
    for jid, job in jobs.items():
        sts, ats = stages.get(jid, []), attempts.get(jid, [])
        if len(sts) != len(job.spec.get("stages") or []) or not sts:
            problems.append(f"{jid}: {len(sts)} stage rows for {len(job.spec.get('stages') or [])} stages")
        if not ats or [a.number for a in ats] != list(range(1, len(ats) + 1)):
            problems.append(f"{jid}: attempts {[a.number for a in ats]}")
            continue
        if jid not in with_events:
            problems.append(f"{jid}: no events")
        last, earlier = ats[-1], ats[:-1]
        if any(a.status in ("queued", "running") for a in earlier):
            problems.append(f"{jid}: an earlier attempt is still {[a.status for a in earlier]}")
        running = [a for a in ats if a.status == "running"]
        if job.status == "queued" and last.status != "queued":
            problems.append(f"{jid}: queued, newest attempt {last.status}")
        if job.status == "running" and (len(running) != 1 or not running[0].lease_token
                                        or not running[0].lease_expires_at):
            problems.append(f"{jid}: running without one leased attempt ({[a.status for a in ats]})")
        if job.status in TERMINAL and last.status in ("queued", "running"):
            problems.append(f"{jid}: {job.status} with attempt {last.number} {last.status}")
        if job.status != "running" and any(st.status == "running" for st in sts):
            problems.append(f"{jid}: {job.status} with a running stage")
    per_job: dict[str, int] = {}
    for key, jid in keys:
        per_job[jid] = per_job.get(jid, 0) + 1
        if jid not in jobs:
            problems.append(f"idempotency key {key} -> missing job {jid}")
    problems += [f"{jid}: {n} idempotency keys" for jid, n in per_job.items() if n > 1]
    return problems


# ------------------------------------------------------------------ figures for the chaos report

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def figures(request):
    """A dict the test fills; recorded (tests/chaos_record.py) under `name` when the test ends, with
    passed = whether it passed and its duration. Nothing is recorded for a skipped test."""
    figs: dict = {}
    t0 = time.time()
    yield figs
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.skipped or "name" not in figs:
        return
    name, fault = figs.pop("name"), figs.pop("fault", "")
    chaos_record.record(name, fault, passed=rep.passed, duration_s=round(time.time() - t0, 1), **figs)
