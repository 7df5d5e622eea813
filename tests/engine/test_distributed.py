"""Real 2-process gloo runs (torchrun) for DDP and DeepSpeed ZeRO 1/2/3 against a 1-process run with
the same global batch; checkpoints move between world sizes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine import checkpoint as ckpt
from tests.conftest import SAMPLE, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # alone: two processes, one a core
TOL = 1e-4  # fp32; reduction order differs between world sizes
BIN = Path(sys.executable).parent


def config(tmp_path, strategy, **kw) -> Path:
    cfg = {"model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)]}, "steps": 6, "batch_size": 8,
           "micro_batch": 2, "log_every": 1, "eval_every": 3, "eval_batches": 2, "checkpoint_every": 3,
           "keep_checkpoints": 5, "precision": "fp32", "parallel": {"strategy": strategy}, **kw}
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(cfg: Path, out: Path, nproc: int = 2):
    # torch's JIT-built extensions go to the run's own directory, so a test sees what a run builds
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(out.parent / "torch_extensions")}
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--standalone",
                           "-m", "engine.commands.train", "--config", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run: Path, split="train") -> dict:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split:
            rows[r["step"]] = r["loss"]
    return rows


def weights(run: Path) -> dict:
    return ckpt.load(ckpt.list_checkpoints(run / "checkpoints")[-1], ("model",))[1]["model"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    proc = run_cli("train", "--config", config(tmp, "ddp"), "--out", tmp / "run")
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3"])
def test_two_processes_match_one(strategy, single, tmp_path):
    torchrun(config(tmp_path, strategy), tmp_path / "run")
    a, b = losses(single), losses(tmp_path / "run")
    assert a.keys() == b.keys() == set(range(1, 7))
    assert max(abs(a[k] - b[k]) for k in a) < TOL, (a, b)
    wa, wb = weights(single), weights(tmp_path / "run")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-3
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["world_size"] == 2 and run_json["backend"]["process_group"] == "gloo"
    # DeepSpeed's inference all-reduce op is not built for training (30-50 s of g++ in a new environment)
    assert not list((tmp_path / "torch_extensions").glob("**/deepspeed_shm_comm*"))


def _cut_after(run: Path, step: int):
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        if int(p.name[5:]) > step:
            shutil.rmtree(p)


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_checkpoint_moves_between_world_sizes(strategy, single, tmp_path):
    # written by 2 processes, resumed by 1
    cfg = config(tmp_path, strategy)
    torchrun(cfg, tmp_path / "two_to_one")
    _cut_after(tmp_path / "two_to_one", 3)
    proc = run_cli("train", "--config", cfg, "--out", tmp_path / "two_to_one")
    assert proc.returncode == 0, proc.stderr
    assert "written by 2 process(es)" in proc.stdout
    # written by 1 process, resumed by 2
    shutil.copytree(single, tmp_path / "one_to_two")
    _cut_after(tmp_path / "one_to_two", 3)
    torchrun(cfg, tmp_path / "one_to_two")
    ref = weights(single)
    for run in ("two_to_one", "one_to_two"):
        w = weights(tmp_path / run)
        assert max((ref[k] - w[k]).abs().max().item() for k in ref) < 1e-3, run
        tail = losses(tmp_path / run)
        assert all(abs(tail[k] - losses(single)[k]) < TOL for k in (4, 5, 6)), run


def test_deepspeed_setting_that_cannot_run_fails_at_plan_time(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    proc = run_cli("train", "--config", config(tmp_path, "zero2", parallel={"strategy": "zero2",
                                                                           "deepspeed_config": str(ds)}),
                   "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert "parallel.deepspeed_config: zero_optimization.offload_optimizer.device=cpu" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_zero_with_bf16_runs_through_deepspeeds_own_autocast(tmp_path):
    """bf16 under ZeRO goes through DeepSpeed's torch_autocast section (gradients of the Linear layers
    reduced in bf16, fp32 master weights), not an outer autocast DeepSpeed cannot see."""
    torchrun(config(tmp_path, "zero2", precision="bf16", steps=3, eval_every=3, checkpoint_every=3),
             tmp_path / "run")
    train = losses(tmp_path / "run")
    assert sorted(train) == [1, 2, 3] and all(0 < v < 10 for v in train.values())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["backend"]["precision"] == "bfloat16"
