"""A real training job survives its worker being SIGKILLed over and over: each time the lease expires,
another worker's attempt takes the job, the engine resumes from the newest checkpoint, and the final
weights are bit-identical to an uninterrupted run of the same config. The engine of a killed worker
never lives on: it gets SIGTERM (PR_SET_PDEATHSIG), checkpoints and exits, and no two engine processes
ever run in the run directory at once."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from chaos_fixtures import PY, REPO, SAMPLE, ChaosService, consistency_problems, describe_processes, processes_in

pytestmark = pytest.mark.alone  # its reference run takes the other core

KILLS = 11
STEPS = 160  # enough for every kill to land mid-run however fast the engine steps (80 ran out)
ORPHAN_DEADLINE_S = 15  # the SIGTERM checkpoint and exit: about 3 s at most measured on a loaded 2-core box
ORPHAN_STEPS = 3  # steps a killed worker's engine may still take: it finishes the one it is in, saves, exits
# one CPU thread for the service's engine and the reference run alike: both compute the same sums
ENGINE_ENV = {"TINYFORGE_STAGE_SPECS": "engine.spec:STAGE_SPECS", "TINYFORGE_ENGINE_COMMAND": f"{PY} -m tinyforge.cli",
              "TINYFORGE_LEASE_S": "2", "OMP_NUM_THREADS": "1",
              # how long the next attempt waits for a killed worker's engine to checkpoint and release the run
              # directory is grace + lease: ample even on a loaded machine (measured: about 3 s at most)
              "TINYFORGE_CANCEL_GRACE_S": "20"}


def train_config() -> dict:
    return {"model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)]}, "steps": STEPS, "batch_size": 8,
            "micro_batch": 4, "seed": 4242, "backend": "cpu", "precision": "fp32", "log_every": 1,
            "eval_every": 20, "eval_batches": 1, "checkpoint_every": 2, "keep_checkpoints": 3}


def newest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*") if (p / "manifest.json").exists()]
    return max(steps, default=0)


def progress_step(run_dir: Path, since: float) -> int:
    path = run_dir / "progress.json"
    try:
        if path.stat().st_mtime < since:
            return -1
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


class Watch(threading.Thread):
    """Samples the processes running in the run directory: the most ever alive at once."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.most, self.seen, self.done = run_dir, 0, set(), threading.Event()
        self.crowd = ""  # who they were, the first time there were several: parent pid and command line

    def run(self):
        while not self.done.wait(0.02):
            procs = processes_in(self.run_dir)
            self.most = max(self.most, len(procs))
            self.seen |= set(procs.items())
            if len(procs) > 1 and not self.crowd:
                self.crowd = "; ".join(f"pid {pid} (parent {parent}): {line}" for pid, (parent, line)
                                       in describe_processes(procs).items())


def flat(obj, prefix: str = "") -> dict:
    """Every tensor and number of a checkpoint part, by path (whatever the optimizer's state layout)."""
    if isinstance(obj, dict):
        return {k: v for key, item in obj.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, item in enumerate(obj) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj} if torch.is_tensor(obj) or isinstance(obj, (int, float)) else {}


def tensors(run_dir: Path) -> dict:
    """Model weights and optimizer state of the final checkpoint (the RNG state aside)."""
    from engine import checkpoint as ckpt
    _, parts = ckpt.load(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    return flat({"model": parts["model"], "optimizer": parts["train_state"]["optimizer"]})


def same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else a == b


@pytest.mark.slow
def test_sigkilled_workers_resume_training_bit_identically(tmp_path, figures):
    figures.update(name="worker_sigkill_train", fault=f"worker SIGKILL x{KILLS} during one real train stage "
                                                      "(micro, CPU, fixed seed)")
    rng = random.Random(20261129)
    svc = ChaosService(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'tinyforge.db'}", **ENGINE_ENV)
    watch = reference = None
    try:
        job = svc.submit({"name": "chaos-train", "resources": {"backend": "cpu", "max_restarts": KILLS + 10},
                          "stages": [{"kind": "train", "config": train_config()}]})
        run_dir = Path(svc.job(job["id"])["stages"][0]["run_dir"])
        watch = Watch(run_dir)
        watch.start()
        kills, orphan_exit_s, orphan_steps, moments = 0, [], [], []
        worker = svc.worker("w0")
        while kills < KILLS:
            name = f"w{kills}"
            claimed = svc.wait(job["id"], lambda j: any(a["worker_id"] == name and a["status"] == "running"
                                                        for a in j["attempts"]), timeout=120)
            assert claimed["status"] == "running", claimed
            t_claim, base = time.time(), newest_checkpoint_step(run_dir)
            if rng.random() < 0.3:  # while the engine starts (imports, data, model) or is being launched
                time.sleep(rng.uniform(0.0, 3.0))
                moments.append(f"startup+{time.time() - t_claim:.1f}s")
            else:  # some steps into training
                target = base + rng.randint(1, 5)
                deadline = time.time() + 120
                while progress_step(run_dir, t_claim) < target:
                    assert time.time() < deadline, "the engine made no progress\n" + svc.logs_of_workers()
                    time.sleep(0.01)
                moments.append(f"step {progress_step(run_dir, t_claim)}")
            assert svc.job(job["id"])["status"] in ("running", "queued"), "the job ended before all kills: raise STEPS"
            engines = processes_in(run_dir)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            t_kill, step_at_kill = time.time(), max(progress_step(run_dir, 0), base)
            kills += 1
            worker = svc.worker(f"w{kills}")  # starts up while the lease runs out
            while set(processes_in(run_dir).items()) & set(engines.items()):
                assert time.time() - t_kill < ORPHAN_DEADLINE_S, f"engine of a killed worker still alive: {engines}"
                time.sleep(0.02)
            orphan_exit_s.append(time.time() - t_kill)
            orphan_steps.append(newest_checkpoint_step(run_dir) - step_at_kill)
            assert orphan_steps[-1] <= ORPHAN_STEPS, "the killed worker's engine trained on: it got no SIGTERM"
            if reference is None:  # the uninterrupted run of the config the worker wrote, on the other core
                # (a copy of it: a command line that names the run directory would count as one of its engines)
                config = tmp_path / "reference.yaml"
                shutil.copyfile(run_dir / "stage.yaml", config)
                reference = subprocess.Popen([PY, "-m", "tinyforge.cli", "train", "--config", str(config), "--out",
                                              str(tmp_path / "reference")], env=svc.env, cwd=REPO,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = svc.wait(job["id"], timeout=240)
        assert done["status"] == "succeeded", done
        figures.update(faults_injected=kills, kill_moments=moments, orphan_exit_max_s=round(max(orphan_exit_s), 2),
                       orphan_steps_max=max(orphan_steps))

        # accounting: every kill is one lost attempt (infra) and one restart, the last attempt succeeded
        attempts = done["attempts"]
        lost = [a for a in attempts if a["status"] == "lost"]
        assert len(lost) >= kills and all(a["failure_class"] == "infra" for a in lost), attempts
        assert attempts[-1]["status"] == "succeeded" and len(attempts) == len(lost) + 1, attempts
        assert done["restarts"] == len(lost)
        # never two engines in the run directory; none left now
        watch.done.set()
        watch.join()
        assert watch.most == 1, f"{watch.most} processes in the run directory at once: {watch.crowd}"
        assert processes_in(run_dir) == {}
        starts = len({p for p, _ in watch.seen})
        assert 1 < starts <= len(attempts)  # at most one engine per attempt (one killed early starts none)

        # the uninterrupted run of the same config, on the same data cache and thread count (one: the engine
        # env's OMP_NUM_THREADS), started after the first kill beside the job's attempts
        ref = tmp_path / "reference"
        _, err = reference.communicate(timeout=300)
        assert reference.returncode == 0, err[-3000:]
        got, want = tensors(run_dir), tensors(ref)
        assert got.keys() == want.keys()
        differ = [k for k in want if not same(got[k], want[k])]
        assert not differ, f"tensors differ from the uninterrupted run: {differ}"
        # the stored loss curve: every step once, the values of the uninterrupted run
        m = svc.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "split": "train",
                                                                  "max_points": 1000}).json()
        points = m["series"][0]["points"]
        want_curve = [(r["step"], r["loss"]) for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())
                      if r.get("split") == "train" and "loss" in r]
        assert [p[0] for p in points] == list(range(1, STEPS + 1))
        assert [(p[0], p[1]) for p in points] == want_curve
        assert consistency_problems(svc.db_url) == []
        figures.update(jobs_completed=1, attempts=len(attempts), engine_processes=starts, lost=0, duplicates=0,
                       orphans=0, max_engines_at_once=watch.most, bit_identical=True, tensors=len(want))
    finally:
        if watch:
            watch.done.set()
        if reference is not None and reference.poll() is None:
            reference.kill()
            reference.wait()
        svc.close()
