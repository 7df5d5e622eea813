"""Stop-and-resume gives bit-identical weights, optimizer state and loss curve to an uninterrupted run
(CPU): after SIGTERM, after SIGKILL at random moments (mid-checkpoint-write included), and after the newest
checkpoints were corrupted (truncated, a flipped byte)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engine import checkpoint as ckpt
from engine.train import train
from tests.chaos_record import record
from tests.conftest import SAMPLE

pytestmark = pytest.mark.alone  # SIGKILLs and SIGTERMs at moments timed against the run

EXE = str(Path(sys.executable).with_name("tinyforge"))

QUIET = dict(show_progress=False, log=lambda *a: None)


def final_state(run: Path) -> dict:
    return ckpt.load(ckpt.list_checkpoints(run / "checkpoints")[-1], ("model",))[1]["model"]


def curve(run: Path) -> dict:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["split"], r["step"])] = r["loss"]
    return rows


def assert_identical(a: Path, b: Path):
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert curve(a) == curve(b)


def assert_same(a, b, where="state"):
    """Bit-for-bit equality of nested checkpoint state (tensors, arrays, RNG tuples, numbers)."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def final_checkpoint(run: Path) -> tuple[dict, dict]:
    manifest, parts = ckpt.load(ckpt.list_checkpoints(run / "checkpoints")[-1])
    return manifest, parts


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_resume_from_a_random_checkpoint_is_bit_identical(tmp_path, micro_spec, compiled, restore_determinism):
    """Compiled too: a long run under `compile: auto` compiles, and its resume must match it bit for bit."""
    k = random.Random(7).randint(1, 11)  # a random stop step, fixed for reproducibility
    spec = micro_spec(checkpoint_every=k, keep_checkpoints=100, compile=compiled)
    train(spec, tmp_path / "full", **QUIET)
    # interrupted run: same spec, but only the checkpoint at step k survives (as if killed after it)
    train(spec, tmp_path / "cut", **QUIET)
    for p in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints"):
        if p.name != f"step_{k:08d}":
            shutil.rmtree(p)
    lines = [l for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines() if json.loads(l)["step"] <= k]
    (tmp_path / "cut" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    train(spec, tmp_path / "cut", **QUIET)
    assert_identical(tmp_path / "full", tmp_path / "cut")


def test_sigterm_saves_and_resumed_process_matches(tmp_path, micro_spec):
    spec = micro_spec(steps=40, checkpoint_every=1000, log_every=1, eval_every=1000)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    exe = str(Path(sys.executable).with_name("tinyforge"))
    stop_at = random.Random(11).randint(3, 25)
    proc = subprocess.Popen([exe, "train", "--config", str(config), "--out", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "cut" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["step"] >= stop_at:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    saved = ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")
    assert len(saved) == 1 and int(saved[0].name[5:]) < 40
    subprocess.run([exe, "train", "--config", str(config), "--out", str(tmp_path / "cut")], check=True,
                   capture_output=True)
    train(spec, tmp_path / "full", **QUIET)
    assert_identical(tmp_path / "full", tmp_path / "cut")


def header_preprocessor_running(pgid: int) -> bool:
    """Inductor's C++ preprocessing of its precompiled header (`g++ ... header.hpp -E`, once a process at its
    first compile) runs in process group `pgid`. Killing it fails the compile, as Slurm's SIGTERM did."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            if (stat.split("(", 1)[1].split(")", 1)[0] == "cc1plus" and int(stat.rsplit(")", 1)[1].split()[2]) == pgid
                    and b"header.hpp" in (proc / "cmdline").read_bytes()):
                return True
        except (OSError, ValueError, IndexError):  # a process that ended while being read
            continue
    return False


@pytest.mark.slow
def test_sigterm_to_the_process_group_during_the_first_compile_saves_and_resumes(tmp_path, micro_spec):
    """Slurm (and a process-group kill) send SIGTERM to the C++ compiler inductor runs in the first compiled
    step as well as to the engine: the step then fails. The engine saves the weights from before that step
    and exits 143; the resumed run ends bit-identical to an uninterrupted compiled run."""
    spec = micro_spec(steps=6, checkpoint_every=1000, log_every=1, eval_every=1000, compile=True)
    config = write_config(tmp_path / "train.yaml", spec)
    env = dict(os.environ, TINYFORGE_HOME=str(tmp_path / "home"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([EXE, "train", "--config", str(config), "--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not header_preprocessor_running(proc.pid):
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before its first compile: {proc.communicate()[1][-2000:]}"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "failed after the signal" in err, err[-3000:]  # the compile failed: the path under test ran
    saved = ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")
    assert [p.name for p in saved] == ["step_00000000"]
    events = [json.loads(line) for line in (tmp_path / "cut" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "preempted" and e.get("step") == 0 for e in events), events
    for out in ("cut", "full"):  # the resume, then the same run uninterrupted
        subprocess.run([EXE, "train", "--config", str(config), "--out", str(tmp_path / out)], env=env, check=True,
                       capture_output=True)
    assert_identical(tmp_path / "full", tmp_path / "cut")


def write_config(path: Path, spec) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def writing(root: Path) -> bool:
    """A checkpoint is being written: its temporary directory exists."""
    return root.is_dir() and any(p.name.startswith(".step_") for p in root.iterdir())


def last_logged_step(log: Path) -> int:
    steps = [int(line.split()[1].split("/")[0]) for line in log.read_text().splitlines()
             if line.startswith("step ") and "/" in line.split()[1]]
    return steps[-1] if steps else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path, micro_spec):
    """10 SIGKILLs of a real `tinyforge train` (half of them while a checkpoint is being written), each
    followed by the same command again; the final weights, optimizer moments and RNG state, and every
    logged loss (replayed steps included) equal an uninterrupted run's bit for bit."""
    kills_wanted = 10
    spec = micro_spec(steps=2 * kills_wanted + 8, checkpoint_every=2, keep_checkpoints=2, log_every=1,
                      eval_every=8, backend="cpu")
    config = write_config(tmp_path / "train.yaml", spec)
    seed = int(os.environ.get("TINYFORGE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    # unbuffered: the log lines are how the test follows each run; one thread: the reference run goes on beside
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    ref_log = open(tmp_path / "ref.log", "w")
    reference = subprocess.Popen([EXE, "train", "--config", str(config), "--out", str(tmp_path / "ref"),
                                  "--no-progress"], stdout=ref_log, stderr=subprocess.STDOUT, env=env)
    cut, root = tmp_path / "cut", tmp_path / "cut" / "checkpoints"
    kills, mid_write, attempts = 0, 0, 0
    while kills < kills_wanted:
        attempts += 1
        log = tmp_path / f"attempt{attempts}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([EXE, "train", "--config", str(config), "--out", str(cut), "--no-progress"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        # kill i lands around step 2i+1..2i+2 of the schedule: in training, after a random extra delay,
        # or the moment a checkpoint's temporary directory appears (mid-write)
        target, at_write = 2 * kills + 1 + rng.randint(0, 1), rng.random() < 0.5
        delay = rng.uniform(0, 0.03)  # within a step or two however fast the machine is
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and last_logged_step(log) < target:
            time.sleep(0.005)
        if at_write:  # a write too quick to catch within 4 steps: kill where it is
            while proc.poll() is None and time.time() < deadline and last_logged_step(log) < target + 4 and \
                    not writing(root):
                time.sleep(0.001)
        else:
            time.sleep(delay)
        assert proc.poll() is None, f"seed {seed}: run ended before kill {kills + 1}:\n{log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_write += writing(root)
    final = subprocess.run([EXE, "train", "--config", str(config), "--out", str(cut), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, f"seed {seed}: {final.stderr[-2000:]}"
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    ref_log.close()
    seconds = time.time() - t0

    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary checkpoint directories left"
    (m_ref, ref), (m_cut, got) = final_checkpoint(tmp_path / "ref"), final_checkpoint(cut)
    assert m_ref["step"] == m_cut["step"] == spec.steps
    assert_same(ref["model"], got["model"], "model")
    assert_same(ref["train_state"], got["train_state"], "train_state")  # AdamW moments and step, RNG
    expected = curve(tmp_path / "ref")
    for line in (cut / "metrics.jsonl").read_text().splitlines():  # replayed steps logged again, identically
        row = json.loads(line)
        assert row["loss"] == expected[(row["split"], row["step"])], (seed, row)
    resumed = [json.loads(line) for line in (cut / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "resumed" for e in resumed) >= kills - 1  # a kill before the first checkpoint may not
    record("engine_sigkill_resume", fault=f"SIGKILL of tinyforge train at random moments, then the same command "
           f"again (seed {seed})", faults_injected=kills, mid_checkpoint_write_kills=mid_write,
           jobs_completed=1, lost=0, bit_identical=True, restarts=attempts, duration_s=round(seconds, 1))


def test_corrupt_newest_checkpoints_are_detected_and_an_older_one_resumes(tmp_path, micro_spec):
    """A flipped byte (step 8) and a truncated file (step 6): both fail their sha256, each is an event
    `checkpoint_corrupt`, the run resumes from step 4 and ends with the same state as before the damage."""
    t0 = time.time()
    spec = micro_spec(steps=8, checkpoint_every=2, keep_checkpoints=10, eval_every=4, backend="cpu")
    run = tmp_path / "run"
    train(spec, run, **QUIET)
    root = run / "checkpoints"
    _, before = final_checkpoint(run)
    flipped = root / "step_00000008" / "model.safetensors"
    truncated = root / "step_00000006" / "train_state.safetensors"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for damaged in (flipped, truncated):
        with pytest.raises(ckpt.CheckpointError, match=f"{damaged.name} fails its sha256 checksum"):
            ckpt.load(damaged.parent)
    assert ckpt.latest_valid(root) == root / "step_00000004"

    train(spec, run, **QUIET)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    corrupt = [(e["path"], e["message"]) for e in events if e["event"] == "checkpoint_corrupt"]
    assert [p for p, _ in corrupt] == [str(flipped.parent), str(truncated.parent)]
    assert all("fails its sha256 checksum" in m for _, m in corrupt)
    assert [e["message"] for e in events if e["event"] == "resumed"] == ["resumed from step 4"]
    _, after = final_checkpoint(run)
    assert_same(before, after)  # model, AdamW moments, RNG: as if nothing had happened
    assert ckpt.latest_valid(root) == root / "step_00000008"
    record("engine_checkpoint_corrupt", fault="newest checkpoints damaged: one flipped byte, one truncated file",
           faults_injected=2, found=len(corrupt), lost=0, jobs_completed=1, resumed_from_step=4,
           duration_s=round(time.time() - t0, 1))
