"""Stop-and-resume gives bit-identical weights and loss curve to an uninterrupted run (CPU)."""
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from engine import checkpoint as ckpt
from engine.train import train
from tests.conftest import SAMPLE

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


def test_resume_from_a_random_checkpoint_is_bit_identical(tmp_path, micro_spec):
    k = random.Random(7).randint(1, 11)  # a random stop step, fixed for reproducibility
    spec = micro_spec(checkpoint_every=k, keep_checkpoints=100)
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
