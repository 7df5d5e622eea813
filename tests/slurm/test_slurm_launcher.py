"""The slurm launcher against a real single-node Slurm (conftest.py): submit and watch, exit codes, a
refused submission, cancel of a pending and a running job, SIGTERM to the real trainer (checkpoint, exit
143), and a 2-task torchrun job of the real engine."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from service.worker.launchers import LaunchRequest, load_launcher
from service.worker.slurm import SlurmError, SlurmLauncher, SlurmProcess, exit_code_of, slurm_time, term_before_limit

pytestmark = pytest.mark.alone  # one Slurm cluster, and a time limit

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
ENGINE = [sys.executable, "-m", "tinyforge.cli"]  # the worker's default engine command


def request(tmp_path: Path, argv: list[str], **kw) -> LaunchRequest:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TINYFORGE_JOB_ID": "j-test"}
    return LaunchRequest(argv=argv, run_dir=tmp_path / "run", env=env, job_id="j-test", stage=kw.pop("stage", "s"),
                         cwd=str(REPO), **{"backend": "cpu", **kw})


def wait(proc: SlurmProcess, timeout: float = 60, until=None) -> tuple[int | None, list[tuple[str, float, str]]]:
    """Poll as the runner does; returns (exit code, every line drained) once it exits or `until(lines)`."""
    lines: list = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        rc = proc.poll()
        lines += proc.drain_final() if rc is not None else proc.drain()
        if rc is not None or (until and until(lines)):
            return rc, lines
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"slurm job {proc.id} still running after {timeout}s:\n" + "\n".join(x[2] for x in lines))


def text(lines, stream=None) -> str:
    return "\n".join(line for s, _, line in lines if stream is None or s == stream)


def job_state(slurm, job_id: str) -> str:
    return slurm.run("scontrol", "show", "job", "-o", job_id).stdout


@pytest.mark.parametrize("state, exit_code, code", [
    ("COMPLETED", "0:0", 0), ("FAILED", "4:0", 4), ("FAILED", "143:0", 143), ("CANCELLED", "0:15", 143),
    ("CANCELLED", "0:9", 137), ("CANCELLED", "0:0", 143), ("TIMEOUT", "0:0", 143), ("PREEMPTED", "1:0", 143),
    ("OUT_OF_MEMORY", "0:125", 3), ("NODE_FAIL", "0:0", 3), ("FAILED", "0:0", 1)])
def test_slurm_outcome_maps_to_the_engine_exit_codes(state, exit_code, code):
    assert exit_code_of(state, exit_code) == code


def test_time_limit_format():
    assert slurm_time(90) == "0-00:01:30" and slurm_time(86400 + 3661.2) == "1-01:01:02"


def test_launcher_is_registered_and_available(slurm):
    assert load_launcher("slurm") is SlurmLauncher


def test_tiny_job_is_watched_to_completion(slurm, tmp_path):
    script = "import os, sys; print('hello from', os.environ['SLURM_JOB_ID'], os.environ['TINYFORGE_JOB_ID']); " \
             "print('to stderr', file=sys.stderr)"
    proc = SlurmLauncher().start(request(tmp_path, [sys.executable, "-c", script]))
    assert proc.id.isdigit() and proc.command[0] == "sbatch"
    rc, lines = wait(proc)
    assert rc == 0, text(lines)
    assert f"hello from {proc.id} j-test" in text(lines, "stdout")  # the job saw the worker's environment
    assert "to stderr" in text(lines, "stderr")
    assert f"slurm job {proc.id} ended: COMPLETED, ExitCode 0:0 -> exit code 0" in text(lines, "system")
    assert "JobState=COMPLETED" in job_state(slurm, proc.id)
    run = tmp_path / "run" / "logs"  # the script and both output files stay next to the run
    assert {p.name for p in run.iterdir()} == {"stage.sbatch", "stage.stdout", "stage.stderr"}
    assert "--job-name=tinyforge-j-test-s" in (run / "stage.sbatch").read_text()
    assert proc.poll() == 0 and proc.drain() == []  # ended: no more queries, nothing new


def test_exit_code_of_a_failed_job_is_recorded(slurm, tmp_path):
    proc = SlurmLauncher().start(request(tmp_path, ["bash", "-c", "echo 'error: bad thing' >&2; exit 4"],
                                         time_limit_s=90))
    rc, lines = wait(proc)
    assert rc == 4 and "error: bad thing" in text(lines, "stderr")
    show = job_state(slurm, proc.id)
    assert "JobState=FAILED" in show and "ExitCode=4:0" in show
    assert "TimeLimit=00:02:00" in show  # 90 s, rounded up to whole minutes by Slurm


def test_sbatch_refusal_names_the_problem(slurm, tmp_path):
    with pytest.raises(SlurmError, match="invalid partition"):
        SlurmLauncher().start(request(tmp_path, ["true"], options={"partition": "no-such-partition"}))


def test_cancel_of_a_pending_job(slurm, tmp_path):
    # held: it stays pending, so there is no process for SIGTERM and terminate() cancels the job
    proc = SlurmLauncher().start(request(tmp_path, ["true"], options={"extra_args": ["--hold"]}))
    rc, lines = wait(proc, until=lambda ls: "PENDING (JobHeldUser)" in text(ls))
    assert rc is None
    proc.terminate()
    rc, lines = wait(proc)
    assert rc == 143 and "JobState=CANCELLED" in job_state(slurm, proc.id)


def test_kill_cancels_a_running_job(slurm, tmp_path):
    proc = SlurmLauncher().start(request(tmp_path, ["bash", "-c", "echo started; exec sleep 600"]))
    wait(proc, until=lambda ls: "started" in text(ls, "stdout"))
    proc.kill()
    rc, lines = wait(proc)
    show = job_state(slurm, proc.id)
    assert "JobState=CANCELLED" in show, show
    assert rc == 143, text(lines)  # sleep died of Slurm's SIGTERM: ExitCode 0:15


def test_an_earlier_attempts_job_keeps_the_run_directory(slurm, tmp_path):
    # a job of the same stage still running (its worker died): the new one waits for it to end
    first = SlurmLauncher().start(request(tmp_path, ["bash", "-c", "echo first; sleep 4"]))
    wait(first, until=lambda ls: "first" in text(ls, "stdout"))
    second = SlurmLauncher().start(request(tmp_path, ["echo", "second"], output_stem="logs/attempt-2"))
    rc, lines = wait(second, until=lambda ls: "PENDING (Dependency)" in text(ls))
    assert rc is None and first.poll() is None
    assert wait(first)[0] == 0 and wait(second)[0] == 0


def train_config(tmp_path: Path, **kw) -> Path:
    cfg = {"model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)]}, "steps": 6, "batch_size": 8,
           "micro_batch": 2, "log_every": 1, "eval_every": 3, "eval_batches": 2, "checkpoint_every": 3,
           "precision": "fp32", "parallel": {"strategy": "ddp"},
           # eager: these tests time Slurm's signals, and the 100,000-step runs would compile under compile:
           # auto; a SIGTERM landing during inductor's first compile kills its g++ too, which a single process
           # survives with a checkpoint (exit 143; tests/engine/test_resume.py) but a multi-process run does not
           "compile": False, **kw}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def engine(kind: str, cfg: Path, run_dir: Path) -> list[str]:
    return [*ENGINE, kind, "--config", str(cfg), "--out", str(run_dir)]


def trained(run: Path, steps: int) -> bool:
    """The engine in `run` has logged `steps` training steps (its progress file)."""
    try:
        return json.loads((run / "progress.json").read_text())["step"] >= steps
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.slow
def test_terminate_stops_the_real_trainer_after_a_checkpoint(slurm, tmp_path):
    cfg = train_config(tmp_path, steps=100_000, eval_every=100_000, checkpoint_every=100_000)
    run = tmp_path / "run"
    proc = SlurmLauncher().start(request(tmp_path, engine("train", cfg, run)))
    rc, lines = wait(proc, timeout=90, until=lambda _: trained(run, 2))
    assert rc is None, text(lines)
    proc.terminate()
    rc, lines = wait(proc, timeout=60)
    assert rc == 143, text(lines)
    assert "checkpoint saved" in text(lines, "stderr")
    assert "ExitCode 143:0 -> exit code 143" in text(lines, "system")
    assert list((run / "checkpoints").glob("step_*"))  # saved on SIGTERM, not on the schedule
    assert not (run / "result.json").exists()


def test_sigterm_is_asked_for_before_the_time_limit(tmp_path):
    args = SlurmLauncher().sbatch_args(request(tmp_path, ["true"], time_limit_s=7200), Path("o"), Path("e"))
    assert "--time=0-02:00:00" in args and "--signal=TERM@120" in args
    assert [term_before_limit(s) for s in (30, 90, 120, 600)] == [45, 90, 90, 120]  # Slurm rounds up to minutes
    assert not any(a.startswith("--signal") for a in SlurmLauncher().sbatch_args(request(tmp_path, ["true"]),
                                                                                 Path("o"), Path("e")))


@pytest.mark.slow
def test_the_real_trainer_checkpoints_before_the_slurm_time_limit(slurm, tmp_path):
    """Submitted with a 10 min limit and --signal=TERM@120. Once the engine trains, the limit is brought
    forward to 2 min from the job's start (`scontrol update`, as an administrator may), so less than the
    120 s of --signal is left: slurmctld sends SIGTERM at its next time-limit check and the engine saves a
    checkpoint and exits 143 before the limit would have killed it. (Waiting out a 4 min limit took two
    minutes of the suite: the signal comes 60-120 s in, and with a 2 min limit and TERM@90 it once came
    before the engine had started, session 9.)"""
    cfg = train_config(tmp_path, steps=100_000, eval_every=100_000, checkpoint_every=100_000)
    run = tmp_path / "run"
    proc = SlurmLauncher().start(request(tmp_path, engine("train", cfg, run), time_limit_s=600))
    assert "--signal=TERM@120" in proc.command
    rc, lines = wait(proc, timeout=90, until=lambda _: trained(run, 2))
    assert rc is None, text(lines)
    update = slurm.run("scontrol", "update", f"JobId={proc.id}", "TimeLimit=2")
    assert update.returncode == 0, update.stderr
    assert "TimeLimit=00:02:00" in job_state(slurm, proc.id)
    rc, more = wait(proc, timeout=150)
    lines += more
    assert rc == 143, text(lines)
    assert "checkpoint saved" in text(lines, "stderr")
    assert "ExitCode 143:0 -> exit code 143" in text(lines, "system")  # the engine's own exit, not a kill
    assert list((run / "checkpoints").glob("step_*"))  # saved on the signal, not on the schedule
    show = job_state(slurm, proc.id)
    assert "JobState=TIMEOUT" not in show, show
    assert "RunTime=00:01:" in show or "RunTime=00:00:" in show, show  # ended inside the 2 min limit


@pytest.mark.slow
def test_two_task_job_runs_the_real_engine_under_torchrun(slurm, tmp_path):
    run = tmp_path / "run"
    req = request(tmp_path, engine("train", train_config(tmp_path), run), stage="train", processes_per_node=2,
                  time_limit_s=600)
    proc = SlurmLauncher().start(req)
    assert "--cpus-per-task=2" in proc.command
    script = (run / "logs" / "stage.sbatch").read_text()
    assert "torch.distributed.run --nnodes=\"$SLURM_NNODES\" --nproc-per-node=2" in script
    assert "--rdzv-backend=c10d --rdzv-endpoint=\"$head_node:$rdzv_port\"" in script
    rc, lines = wait(proc, timeout=150)
    assert rc == 0, text(lines)
    result = json.loads((run / "result.json").read_text())
    assert result["kind"] == "train" and result["summary"]["val_loss"] > 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"]["process_group"] == "gloo"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == list(range(1, 7))
    assert f"rendezvous {slurm.host}:" in text(lines, "stdout")
