"""The PostgreSQL server restarts three times while a job runs, once staying down while a stage ends and
the next one starts: the worker rides it out (its writes retry
until the lease would have expired), the API answers again once the server is back, and the job
completes without losing its attempt, a metrics line, or a stage. Restarts the real local server, so
the suite must not run tests in parallel against it; the server is up again whatever happens."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chaos_fixtures import ChaosService, consistency_problems, pg_restartable, stage


def progress(run_dir: Path) -> int:
    """The stage's own progress file: exact timing, where the database copy lags a heartbeat."""
    try:
        return int(json.loads((run_dir / "progress.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_postgres_restarts_while_a_job_runs(tmp_path, pg_url, figures):
    figures.update(name="postgres_restart", fault="PostgreSQL restarted 3x while a two-stage job runs (down across the "
                                                 "change of stage once)")
    with pg_restartable() as pg:
        # a lease longer than a restart: the worker is expected to keep it, not to lose it
        svc = ChaosService(tmp_path / "home", pg_url, TINYFORGE_LEASE_S=20)
        try:
            worker = svc.worker("w0")
            job = svc.submit({"name": "pg-restart", "stages": [
                stage(name="first", steps=40, step_time=0.1, checkpoint_every=5),
                stage(name="second", steps=60, step_time=0.1, checkpoint_every=5)]})
            run_dirs = {st["name"]: Path(st["run_dir"]) for st in svc.job(job["id"])["stages"]}
            errors, took = 0, []
            for name, step in (("first", 8), ("first", 36), ("second", 15)):
                deadline = time.time() + 120
                while progress(run_dirs[name]) < step:
                    assert time.time() < deadline, svc.logs_of_workers()
                    time.sleep(0.01)
                if step != 36:  # mid-stage
                    took.append(pg.restart())
                    continue
                # down while the first stage ends and the second starts: the worker records the exit and
                # starts the next stage only once the server is back
                t0 = time.time()
                pg.stop()
                while not (run_dirs["first"] / "result.json").exists():
                    assert time.time() - t0 < 60
                    time.sleep(0.05)
                time.sleep(1.0)
                pg.start()
                took.append(time.time() - t0)
            deadline = time.time() + 120
            while True:
                r, e = svc.get(f"/v1/jobs/{job['id']}")
                errors += e
                if r.json()["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.time() < deadline, r.json()
                time.sleep(0.2)
            done = r.json()
            figures.update(faults_injected=len(took), restart_s=[round(t, 1) for t in took], http_5xx=errors)
            assert done["status"] == "succeeded", (done, svc.logs_of_workers())
            assert [a["status"] for a in done["attempts"]] == ["succeeded"]  # no lease lost, no restart needed
            assert worker.poll() is None  # the worker process survived every restart
            m = svc.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "split": "train",
                                                                      "max_points": 1000}).json()
            steps = {s["stage"]: [p[0] for p in s["points"]] for s in m["series"]}
            assert steps == {"first": list(range(1, 41)), "second": list(range(1, 61))}  # every line once
            assert svc.http.get("/readyz").status_code == 200
            assert consistency_problems(svc.db_url) == []
            figures.update(jobs_completed=1, lost=0, duplicates=0)
        finally:
            svc.close()
