"""Each bad input ends with one `error:` line naming the cause, a non-zero exit, and nothing lost."""
import os

import pytest
import yaml

from engine import checkpoint as ckpt
from tests.conftest import SAMPLE, run_cli

BASE = {"model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)]}, "steps": 2, "batch_size": 4,
        "micro_batch": 4, "eval_batches": 1}


def write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def error_line(proc):
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert lines, proc.stderr
    return lines[-1]


@pytest.mark.parametrize("patch, code, needle", [
    ({"data": {"sources": ["/nonexistent/corpus"]}}, 2, "data.sources: /nonexistent/corpus does not exist"),
    ({"model": {"preset": "gpt-17"}}, 2, "model.preset: unknown preset 'gpt-17'"),
    ({"stepz": 3}, 2, "stepz: Extra inputs are not permitted"),
    ({"optim": {"lr": "fast"}}, 2, "optim.lr: Input should be a valid number"),
    ({"micro_batch": -1}, 2, "micro_batch: Input should be greater than 0"),
    ({"model": {"preset": "micro", "overrides": {"vocab_size": 100}}}, 2, "model.vocab_size: 100 is smaller"),
    ({"micro_batch": 4, "memory_limit_gb": 0.001}, 2, "model: 0.1M parameters need 2.1 MiB"),
])
def test_bad_config(tmp_path, patch, code, needle):
    proc = run_cli("train", "--config", write(tmp_path, {**BASE, **patch}), "--out", tmp_path / "run")
    assert proc.returncode == code, proc.stderr
    assert needle in error_line(proc)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    proc = run_cli("train", "--config", write(tmp_path, {**BASE, "data": {"sources": [str(tmp_path / "empty")]}}),
                   "--out", tmp_path / "run")
    assert proc.returncode == 2 and "is empty" in error_line(proc)


def test_corrupt_init_checkpoint_is_refused_and_untouched(trained_run, tmp_path):
    run, _ = trained_run
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(ckpt.list_checkpoints(run / "checkpoints")[-1], bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    before = (bad / "model.safetensors").read_bytes()
    proc = run_cli("train", "--config", write(tmp_path, {**BASE, "init": {"checkpoint": str(bad)}}),
                   "--out", tmp_path / "run")
    assert proc.returncode == 2 and "fails its sha256 checksum" in error_line(proc)
    assert (bad / "model.safetensors").read_bytes() == before


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, micro_spec):
    from engine.train import train
    spec = micro_spec(steps=6, checkpoint_every=3, keep_checkpoints=5)
    train(spec, tmp_path / "run", show_progress=False, log=lambda *a: None)
    newest = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    os.truncate(newest / "model.safetensors", 10)
    older = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    assert ckpt.latest_valid(tmp_path / "run" / "checkpoints") == older
    train(spec, tmp_path / "run", show_progress=False, log=lambda *a: None)  # resumes from step 3, redoes 4-6
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert "checkpoint_corrupt" in events and "resumed from step 3" in events
    ckpt.verify(ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1])


def test_failed_checkpoint_write_leaves_previous_valid(tmp_path):
    import torch
    first = ckpt.save(tmp_path, 1, {"model": {"w": torch.ones(3)}}, {})

    class Unstorable:  # no tensor, array, number or string: fails after the model part is written
        pass
    with pytest.raises(TypeError, match="cannot store 'x' of type Unstorable"):
        ckpt.save(tmp_path, 2, {"model": {"w": torch.ones(3)}, "train_state": {"x": Unstorable()}}, {}, keep=1)
    assert ckpt.list_checkpoints(tmp_path) == [first]
    ckpt.verify(first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
