"""The PostgreSQL server restarts three times while a job runs, once staying down while a stage ends and
the next one starts: the worker rides it out (its database calls retry
until the lease would have expired), the API answers again once the server is back (submissions made
throughout, retried with their Idempotency-Key, are all there once), and the job
completes without losing its attempt, a metrics line, or a stage. Restarts the real local server, so
the suite must not run tests in parallel against it; the server is up again whatever happens."""
from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from chaos_fixtures import ChaosService, consistency_problems, pg_restartable, stage

pytestmark = pytest.mark.alone  # restarts the PostgreSQL server other tests use


class Submitter(threading.Thread):
    """Submits jobs with idempotency keys throughout, retrying (same key) what got no 2xx answer. The jobs
    ask for a CUDA device, so the CPU worker leaves them queued."""

    def __init__(self, svc):
        super().__init__(daemon=True)
        self.svc, self.stop, self.acked, self.counts = svc, threading.Event(), {}, collections.Counter()

    def run(self):
        with httpx.Client(base_url=self.svc.url, headers={"Authorization": f"Bearer {self.svc.token}"},
                          timeout=10) as h:
            i = 0
            while not self.stop.is_set():
                key = f"during-{i}"
                spec = {"name": key, "labels": {"during": "1"}, "resources": {"backend": "cuda"},
                        "stages": [stage(steps=1)]}
                try:
                    r = h.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    self.counts["transport_errors"] += 1
                    continue
                if r.status_code in (200, 201):
                    self.acked[key] = r.json()["id"]
                    i += 1
                    time.sleep(0.05)
                else:
                    assert r.status_code >= 500, r.text
                    self.counts["http_5xx"] += 1
                    self.counts[f"http_{r.status_code}"] += 1
                    time.sleep(0.1)


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
            submitter = Submitter(svc)
            submitter.start()
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
            time.sleep(0.5)
            submitter.stop.set()
            submitter.join(30)
            deadline = time.time() + 120
            while True:
                r, e = svc.get(f"/v1/jobs/{job['id']}")
                errors += e
                if r.json()["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.time() < deadline, r.json()
                time.sleep(0.2)
            done = r.json()
            figures.update(faults_injected=len(took), restart_s=[round(t, 1) for t in took])
            assert done["status"] == "succeeded", (done, svc.logs_of_workers())
            assert [a["status"] for a in done["attempts"]] == ["succeeded"]  # no lease lost, no restart needed
            assert worker.poll() is None  # the worker process survived every restart
            m = svc.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "split": "train",
                                                                      "max_points": 1000}).json()
            steps = {s["stage"]: [p[0] for p in s["points"]] for s in m["series"]}
            assert steps == {"first": list(range(1, 41)), "second": list(range(1, 61))}  # every line once
            assert svc.http.get("/readyz").status_code == 200
            # submissions acknowledged while the server restarted: all there, none twice
            listed = svc.http.get("/v1/jobs", params={"label": "during=1", "limit": 500}).json()["items"]
            names = collections.Counter(j["name"] for j in listed)
            ids = {j["name"]: j["id"] for j in listed}
            found = sum(1 for k, jid in submitter.acked.items() if ids.get(k) == jid)
            figures.update(acknowledged=len(submitter.acked), found=found,
                           http_5xx=errors + submitter.counts["http_5xx"],
                           transport_errors=submitter.counts["transport_errors"])
            assert found == len(submitter.acked) > 0 and set(names.values()) == {1}
            assert submitter.counts["http_5xx"] == submitter.counts["http_503"]  # "unavailable, retry", not a crash
            assert set(names) <= set(submitter.acked) | {f"during-{len(submitter.acked)}"}  # + one maybe in flight
            assert consistency_problems(svc.db_url) == []
            figures.update(jobs_completed=1, lost=0, duplicates=sum(n - 1 for n in names.values()))
        finally:
            svc.close()
