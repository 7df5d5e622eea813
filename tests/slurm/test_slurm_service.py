"""The service running stages through the slurm launcher: a real `tinyforge serve` and worker (the
harness and fake engine of tests/support) against the real single-node Slurm."""
from __future__ import annotations

import pytest

from tests.support import service as fixtures

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # alone: one Slurm cluster
SLURM = {"launcher": "slurm", "backend": "cpu"}


@pytest.fixture
def service(slurm, tmp_path):
    with fixtures.Service.on_sqlite(tmp_path) as svc:
        svc.worker()
        yield svc


def lines(service, job_id: str, stream: str) -> list[str]:
    r = service.http.get(f"/v1/jobs/{job_id}/logs", params={"stream": stream})
    return [x["line"] for x in r.json()["lines"]]


def test_a_stage_runs_as_a_slurm_job_and_its_id_is_recorded(service, slurm):
    job = service.submit({"name": "on-slurm", "resources": SLURM, "stages": [fixtures.stage(steps=3)]})
    done = service.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", lines(service, job["id"], "system")
    launch_id = done["stages"][0]["launch_id"]
    assert launch_id.isdigit()
    assert f"JobId={launch_id} " in slurm.run("scontrol", "show", "job", "-o", launch_id).stdout
    system = lines(service, job["id"], "system")
    seen = [x.split(": ")[1] for x in system if x.startswith(f"slurm job {launch_id}: ")]  # states as polled
    assert seen and set(seen) <= {"PENDING", "RUNNING", "COMPLETING"}, system
    assert any(f"slurm job {launch_id} ended: COMPLETED" in x for x in system), system
    assert any("$ sbatch --parsable" in x for x in system), system


def test_cancel_stops_the_slurm_job_after_its_checkpoint(service, slurm):
    job = service.submit({"name": "long", "resources": SLURM,
                          "stages": [fixtures.stage(steps=10_000, step_time=0.02)]})
    service.wait(job["id"], lambda j: (j["stages"][0].get("step") or 0) >= 5, timeout=60)
    service.http.post(f"/v1/jobs/{job['id']}:cancel")
    done = service.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled" and done["attempts"][-1]["exit_code"] == 143
    assert any("stopped by SIGTERM" in x for x in lines(service, job["id"], "stderr"))
    launch_id = done["stages"][0]["launch_id"]
    assert "ExitCode=143:0" in slurm.run("scontrol", "show", "job", "-o", launch_id).stdout
