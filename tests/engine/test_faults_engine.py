"""Engine faults with nothing lost: a full disk while a checkpoint is written, non-finite losses under each
nonfinite.policy (injected by engine/faults.py), and absurd sizes refused when the spec is validated."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from engine import checkpoint as ckpt
from engine import faults
from engine.arch import count_params
from engine.config import model_config, padded_vocab
from engine.tokenizer.load import ByteTokenizer
from engine.train import lr_at, train
from tests.chaos_record import record
from tests.conftest import SAMPLE, run_cli

QUIET = dict(show_progress=False, log=lambda *a: None)


def events(run: Path, kind: str | None = None) -> list[dict]:
    path = run / "events.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in rows if kind is None or e["event"] == kind]


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert lines, stderr
    return lines[-1]


def states(run: Path, step: int) -> dict:
    _, parts = ckpt.load(run / "checkpoints" / f"step_{step:08d}")
    return {"model": parts["model"], "optimizer": parts["train_state"]["optimizer"]}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ---------------------------------------------------------------- disk full


def mount_tmpfs(path: Path, size: int) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exited {proc.returncode}")


def test_disk_full_while_checkpointing_fails_cleanly_and_keeps_the_previous_checkpoint(tmp_path, micro_spec):
    t0 = time.time()
    run = tmp_path / "run"
    root = run / "checkpoints"
    n = count_params(model_config("micro", vocab_size=padded_vocab(ByteTokenizer().vocab_size))).total
    one_checkpoint = 12 * n  # fp32 weights + two AdamW moments; 1.5 of them fit, two do not
    why = mount_tmpfs(root, (int(1.5 * one_checkpoint) // 4096 + 1) * 4096)
    if why:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {why}")
    try:
        spec = micro_spec(steps=6, checkpoint_every=2, keep_checkpoints=5, eval_every=100, backend="cpu")
        config = tmp_path / "train.yaml"
        config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        proc = run_cli("train", "--config", config, "--out", run)
        assert proc.returncode == 3, proc.stderr  # infrastructure, not the user's fault
        line = error_line(proc.stderr)
        assert line.startswith("error: disk full: no space left on device") and \
            str(root / "step_00000004") in line, line
        assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]  # partial write and temp removed
        assert ckpt.latest_valid(root) == root / "step_00000002"
        manifest, parts = ckpt.load(root / "step_00000002")
        assert manifest["step"] == 2 and all_finite(parts["model"])
        [event] = events(run, "disk_full")
        assert event["path"] == str(root / "step_00000004") and event["step"] == 4

        # space freed: the same command resumes from the kept checkpoint and finishes
        subprocess.run(["mount", "-o", "remount,size=64m", str(root)], check=True)
        again = run_cli("train", "--config", config, "--out", run)
        assert again.returncode == 0, again.stderr
        assert [e["message"] for e in events(run, "resumed")] == ["resumed from step 2"]
        assert ckpt.latest_valid(root) == root / "step_00000006"
        record("engine_disk_full", fault="ENOSPC on a small tmpfs while writing a checkpoint", faults_injected=1,
               found=1, lost=0, exit_code=proc.returncode, resumed_from_step=2, jobs_completed=1,
               duration_s=round(time.time() - t0, 1))
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


# ---------------------------------------------------------------- non-finite losses


def test_nonfinite_skip_drops_exactly_that_update(tmp_path, micro_spec, monkeypatch):
    t0 = time.time()
    monkeypatch.setenv(faults.NONFINITE_ENV, "3")
    spec = micro_spec(steps=5, checkpoint_every=1, keep_checkpoints=10, log_every=1, eval_every=100,
                      backend="cpu", nonfinite={"policy": "skip"})
    result = train(spec, tmp_path / "run", **QUIET)
    run = tmp_path / "run"
    [event] = events(run, "nonfinite_loss")
    assert (event["step"], event["action"], event["loss"], event["count"]) == (3, "skip", "nan", 1)
    assert same(states(run, 3), states(run, 2))  # no optimizer step, no state change at step 3
    assert not same(states(run, 4)["model"], states(run, 3)["model"])  # training went on
    assert all(all_finite(states(run, s)["model"]) for s in range(1, 6))
    assert result["summary"]["nonfinite"] == {"policy": "skip", "events": 1, "lr_scale": 1.0}
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert logged == [1, 2, 4, 5]
    record("engine_nonfinite_skip", fault="NaN loss injected at step 3, policy skip", faults_injected=1, found=1,
           lost=0, jobs_completed=1, duration_s=round(time.time() - t0, 1))


def test_nonfinite_rollback_reloads_lowers_the_lr_and_a_resume_keeps_it(tmp_path, micro_spec, monkeypatch):
    t0 = time.time()
    monkeypatch.setenv(faults.NONFINITE_ENV, "5")
    spec = micro_spec(steps=8, checkpoint_every=2, keep_checkpoints=10, log_every=1, eval_every=100,
                      backend="cpu", nonfinite={"policy": "rollback", "lr_factor": 0.5})
    run = tmp_path / "run"
    result = train(spec, run, **QUIET)
    [event] = events(run, "nonfinite_loss")
    assert (event["step"], event["action"], event["to_step"], event["lr_scale"]) == (5, "rollback", 4, 0.5)
    lrs = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "train":
            lrs[row["step"]] = row["lr"]  # the last line of a step wins (steps 5.. were replayed)
    for step in range(1, 9):
        want = lr_at(step - 1, 8, spec, spec.optim.lr) * (0.5 if step >= 5 else 1.0)
        assert lrs[step] == pytest.approx(want, rel=1e-12), step
    assert result["summary"]["nonfinite"] == {"policy": "rollback", "events": 1, "lr_scale": 0.5}
    _, parts = ckpt.load(run / "checkpoints" / "step_00000008")
    assert parts["train_state"]["nonfinite"] == {"events": 1, "lr_scale": 0.5} and all_finite(parts["model"])
    _, back = ckpt.load(run / "checkpoints" / "step_00000004")
    assert back["train_state"]["nonfinite"]["lr_scale"] == 0.5  # re-written at the rollback

    # persisted: the same run continued to 10 steps keeps the lowered learning rate
    monkeypatch.delenv(faults.NONFINITE_ENV)
    longer = spec.model_copy(update={"steps": 10})
    train(longer, run, **QUIET)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tail = {r["step"]: r["lr"] for r in rows if r["split"] == "train" and r["step"] > 8}
    assert tail == {s: pytest.approx(0.5 * lr_at(s - 1, 10, longer, spec.optim.lr), rel=1e-12) for s in (9, 10)}
    record("engine_nonfinite_rollback", fault="NaN loss injected at step 5, policy rollback", faults_injected=1,
           found=1, lost=0, jobs_completed=1, duration_s=round(time.time() - t0, 1))


def test_nonfinite_fail_stops_with_a_clear_reason(tmp_path, micro_spec):
    spec = micro_spec(steps=6, checkpoint_every=2, eval_every=100, backend="cpu")  # default policy: fail
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    proc = run_cli("train", "--config", config, "--out", tmp_path / "run", env={faults.NONFINITE_ENV: "3"})
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc.stderr) == "error: loss became nan at step 3 (nonfinite.policy=fail)"
    [event] = events(tmp_path / "run", "nonfinite_loss")
    assert (event["step"], event["action"]) == (3, "fail")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000002"]
    assert not (tmp_path / "run" / "result.json").exists()


def test_nonfinite_over_max_events_fails(tmp_path, micro_spec, monkeypatch):
    monkeypatch.setenv(faults.NONFINITE_ENV, "2,4")
    spec = micro_spec(steps=6, checkpoint_every=2, eval_every=100, backend="cpu",
                      nonfinite={"policy": "skip", "max_events": 1})
    with pytest.raises(FloatingPointError, match="at step 4: non-finite loss number 2, over nonfinite.max_events=1"):
        train(spec, tmp_path / "run", **QUIET)
    assert [(e["step"], e["action"]) for e in events(tmp_path / "run", "nonfinite_loss")] == \
        [(2, "skip"), (4, "fail")]


# ---------------------------------------------------------------- absurd sizes at plan time


SAMPLE_SOURCES = {"sources": [str(SAMPLE)]}


def test_absurd_batch_is_refused_by_the_cli_before_anything_is_written(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": SAMPLE_SOURCES, "batch_size": 1000000, "micro_batch": 1000000}))
    proc = run_cli("train", "--config", config, "--out", tmp_path / "run", env={"TINYFORGE_MEMORY_LIMIT_GB": "20"})
    line = error_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert re.match(r"error: micro_batch: training memory estimate \d+\.\d GiB \(", line), line
    assert "exceeds the limit 20.0 GiB (TINYFORGE_MEMORY_LIMIT_GB)" in line and "batch_size=1000000" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("patch, field, needle", [
    ({"model": {"preset": "pangu-pi-1.5b-pro"}, "batch_size": 64, "micro_batch": 64}, "micro_batch",
     "training memory estimate"),
    ({"model": {"preset": "micro", "overrides": {"n_layer": 400, "n_embd": 16384, "n_head": 64}}}, "model",
     "parameters need"),
    ({"steps": 2**62, "batch_size": 1024, "micro_batch": 8}, "steps", "overflows a 64-bit counter"),
])
def test_absurd_sizes_are_refused_at_validation(monkeypatch, patch, field, needle):
    from engine.spec import SpecError, parse
    monkeypatch.setenv("TINYFORGE_MEMORY_LIMIT_GB", "20")
    with pytest.raises(SpecError) as err:
        parse("train", {"data": SAMPLE_SOURCES, **patch})
    assert str(err.value).startswith(f"{field}: ") and needle in str(err.value), err.value
    if field != "steps":
        assert "the limit 20.0 GiB (TINYFORGE_MEMORY_LIMIT_GB)" in str(err.value)


def test_explicit_memory_limit_wins(micro_spec):
    from engine.spec import SpecError, parse
    base = {"model": {"preset": "micro"}, "batch_size": 64, "micro_batch": 64}
    parse("train", {**base, "memory_limit_gb": 1})  # fits: about 23 MiB
    with pytest.raises(SpecError, match=r"micro_batch: training memory estimate .* exceeds the limit 10\.0 MiB "
                                        r"\(memory_limit_gb\)"):
        parse("train", {**base, "memory_limit_gb": 10 / 1024})
