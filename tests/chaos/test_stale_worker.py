"""A worker frozen (SIGSTOP) past its lease, while its stage keeps running: the job is requeued and
another worker claims it, but waits for the run directory's lock, held by the frozen worker's stage.
When the frozen worker wakes up, its first write finds the lease taken away (fencing by lease token):
it writes nothing more, stops its stage (SIGTERM: checkpoint, exit), and the new attempt resumes
from that checkpoint. Never two stage processes in the run directory, every metrics line once."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from chaos_fixtures import ChaosService, consistency_problems, processes_in, stage
from service.db import Database
from service.db.models import LogLine

pytestmark = pytest.mark.alone  # freezes a worker past a lease of seconds


def lines_of_attempt(db_url: str, number: int) -> int:
    """Log lines the service stored for attempt `number`."""
    db = Database(db_url)
    try:
        with db.read() as s:
            return s.scalar(select(func.count()).select_from(LogLine).where(LogLine.attempt == number))
    finally:
        db.dispose()


@pytest.mark.slow
def test_a_frozen_worker_is_fenced_off_when_it_wakes(tmp_path, any_db_url, figures):
    kind = any_db_url.split(":")[0]
    figures.update(name=f"worker_sigstop_{kind}", fault=f"worker frozen (SIGSTOP) past its lease, then woken ({kind})")
    svc = ChaosService(tmp_path / "home", any_db_url)
    try:
        frozen = svc.worker("w-frozen")
        job = svc.submit({"name": "stale", "stages": [stage(steps=60, step_time=0.1, checkpoint_every=5)]})
        run_dir = Path(svc.job(job["id"])["stages"][0]["run_dir"])
        svc.wait(job["id"], lambda j: (j.get("step") or 0) >= 10)
        frozen.send_signal(signal.SIGSTOP)
        t_stop = time.time()
        svc.worker("w-heir")
        svc.wait(job["id"], lambda j: any(a["worker_id"] == "w-heir" and a["status"] == "running"
                                          for a in j["attempts"]), timeout=60)
        assert len(processes_in(run_dir)) == 1  # the frozen worker's stage still runs and holds the lock
        before = lines_of_attempt(svc.db_url, 1)
        frozen.send_signal(signal.SIGCONT)
        frozen_s = time.time() - t_stop
        done = svc.wait(job["id"], timeout=60)
        assert done["status"] == "succeeded", (done, svc.logs_of_workers())
        a1, a2 = done["attempts"]
        assert (a1["status"], a1["worker_id"], a2["status"], a2["worker_id"]) == \
            ("lost", "w-frozen", "succeeded", "w-heir"), done["attempts"]
        # fenced: after waking, the stale worker stored no line of its attempt
        assert lines_of_attempt(svc.db_url, 1) == before
        logs = svc.http.get(f"/v1/jobs/{job['id']}/logs", params={"limit": 5000}).json()
        lines = [x["line"] for x in logs["lines"]]
        assert any("waiting for a process of an earlier attempt" in x for x in lines)
        starts = done["stages"][0]["summary"]["starts"]
        assert starts[0] == [1, 0] and starts[-1][0] == 2 and starts[-1][1] >= 10  # resumed, did not start over
        m = svc.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "split": "train",
                                                                  "max_points": 1000}).json()
        assert [p[0] for p in m["series"][0]["points"]] == list(range(1, 61))
        assert frozen.poll() is None  # the stale worker lives on, idle
        assert consistency_problems(svc.db_url) == []
        assert json.loads((run_dir / "result.json").read_text())["summary"]["steps"] == 60
        figures.update(faults_injected=1, frozen_s=round(frozen_s, 1), jobs_completed=1, lost=0, duplicates=0)
    finally:
        svc.close()
