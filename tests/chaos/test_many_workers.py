"""Four worker processes on PostgreSQL drain 200 short jobs: every job runs exactly once. Checked in the
database (one attempt, one `started` event per job) and by a side effect of each real execution (a line
appended per engine process by tests/support/fake_engine.py when $CHAOS_SIDE_EFFECTS names a file)."""
from __future__ import annotations

import collections
import threading
import time

import pytest

from chaos_fixtures import ChaosService, consistency_problems, stage

pytestmark = pytest.mark.alone  # four workers racing for jobs

JOBS, WORKERS, CLIENTS = 200, 4, 4


@pytest.mark.slow
def test_four_workers_run_two_hundred_jobs_exactly_once(tmp_path, pg_url, figures):
    figures.update(name="workers_exactly_once_pg", fault=f"{WORKERS} workers racing to claim {JOBS} jobs "
                                                         "(PostgreSQL, SKIP LOCKED)")
    side = tmp_path / "executions.log"
    svc = ChaosService(tmp_path / "home", pg_url, CHAOS_SIDE_EFFECTS=side)  # the fake engine logs each run there
    try:
        for i in range(WORKERS):
            svc.worker(f"w{i}")
        ids: list[str] = []
        lock = threading.Lock()

        def submit(c: int) -> None:  # submissions race with the workers' claims
            for i in range(c, JOBS, CLIENTS):
                job = svc.submit({"name": f"once-{i}", "resources": {"priority": i % 3},
                                  "stages": [stage(steps=1, step_time=0)]})
                with lock:
                    ids.append(job["id"])

        t0 = time.time()
        threads = [threading.Thread(target=submit, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == JOBS
        deadline = time.time() + 180
        while True:
            r = svc.http.get("/v1/jobs", params={"status": "queued,running", "limit": 1})
            assert r.status_code == 200, r.text
            if not r.json()["items"]:
                break
            assert time.time() < deadline, "jobs still waiting\n" + svc.logs_of_workers()
            time.sleep(0.3)
        drain_s = time.time() - t0

        jobs = [svc.job(i) for i in ids]
        not_ok = [j["id"] for j in jobs if j["status"] != "succeeded"]
        multi = [j["id"] for j in jobs if len(j["attempts"]) != 1 or j["attempts"][0]["status"] != "succeeded"]
        started = {i: [e["type"] for e in svc.http.get(f"/v1/jobs/{i}/events").json()].count("started") for i in ids}
        runs = collections.Counter(line.split()[0] for line in side.read_text().splitlines())
        duplicates = sum(n - 1 for n in runs.values() if n > 1)
        lost = [i for i in ids if runs[i] == 0]
        workers = collections.Counter(j["attempts"][0]["worker_id"] for j in jobs)
        figures.update(jobs_completed=JOBS - len(not_ok), executions=sum(runs.values()), duplicates=duplicates,
                       lost=len(lost), workers=WORKERS, jobs_per_worker=dict(workers), drain_s=round(drain_s, 1))
        assert not_ok == [] and multi == []
        assert set(started.values()) == {1}  # claimed once each
        assert set(runs) == set(ids) and duplicates == 0 and lost == []  # executed once each
        assert len(workers) >= 2, workers  # the work was shared
        assert consistency_problems(svc.db_url) == []
    finally:
        svc.close()
