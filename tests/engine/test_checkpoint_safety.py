"""Checkpoints are never unpickled: a planted pickle (a `.pt` whose loading runs a command) given to
`train` as init.checkpoint, as the run directory to resume, to eval, export-hf or import-hf is refused with
a clear error and its payload never runs; a checkpoint holds only safetensors and JSON, and a full save,
load and bit-identical resume runs with every unpickler in the process made to raise."""
import _pickle
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine import checkpoint as ckpt
from engine.config import ModelConfig, model_config, padded_vocab
from engine.model import GPT
from engine.tokenizer.load import ByteTokenizer
from tests.conftest import SAMPLE, run_cli

QUIET = dict(show_progress=False, log=lambda *a: None)


class Payload:
    """Unpickling this runs a shell command that writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def plant(step_dir: Path, marker: Path) -> Path:
    """An old-format checkpoint as an attacker would write it: torch.save'd model.pt / train_state.pt that
    run a command when loaded, and a manifest with their correct checksums and a valid model config."""
    step_dir.mkdir(parents=True)
    for part in ("model", "train_state"):
        torch.save({"weights": Payload(marker)}, step_dir / f"{part}.pt")
    cfg = model_config("micro", vocab_size=padded_vocab(ByteTokenizer().vocab_size))
    files = {p.name: ckpt.sha256(p) for p in step_dir.iterdir()}
    (step_dir / ckpt.MANIFEST).write_text(json.dumps({"step": 4, "files": files, "model_config": cfg.to_dict(),
                                                      "tokenizer": "byte"}))
    return step_dir


@pytest.fixture
def planted(tmp_path):
    marker = tmp_path / "pwned"
    step_dir = plant(tmp_path / "evil" / "step_00000004", marker)
    # the payload is real: loading the file the old way runs it (in this test only, on a copy)
    probe = tmp_path / "probe_marker"
    torch.save(Payload(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.read_text() == "pwned\n"
    return step_dir, marker


def refused(proc, marker: Path):
    assert proc.returncode == 2, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][-1]
    assert "pickle-format checkpoint" in line and "not accepted" in line, line
    assert not marker.exists()


def train_config(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)]}, "steps": 8,
                                    "batch_size": 8, "micro_batch": 4, "checkpoint_every": 4, "eval_every": 100,
                                    "backend": "cpu", **extra}))
    return path


def test_train_refuses_a_pickle_init_checkpoint(planted, tmp_path):
    step_dir, marker = planted
    for init in ({"checkpoint": str(step_dir)}, {"checkpoint": str(step_dir), "continue_run": True}):
        proc = run_cli("train", "--config", train_config(tmp_path, init=init), "--out", tmp_path / "run")
        refused(proc, marker)
        assert str(step_dir) in proc.stderr
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_resume_refuses_a_pickle_checkpoint_instead_of_starting_over(planted, tmp_path):
    step_dir, marker = planted
    run = tmp_path / "run"
    shutil.copytree(step_dir.parent, run / "checkpoints")
    proc = run_cli("train", "--config", train_config(tmp_path), "--out", run)
    refused(proc, marker)
    # refused, not skipped as corrupt: no fresh run wrote checkpoints beside it
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step_00000004"]


def test_eval_export_and_inherit_refuse_a_pickle_checkpoint(planted, tmp_path):
    step_dir, marker = planted
    for given in (step_dir, step_dir.parent):  # the checkpoint, or a folder meaning its newest one
        cfg = tmp_path / "eval.yaml"
        cfg.write_text(yaml.safe_dump({"checkpoint": str(given), "data": {"sources": [str(SAMPLE)]}, "batches": 1,
                                       "micro_batch": 2, "backend": "cpu"}))
        refused(run_cli("eval", "--config", cfg, "--out", tmp_path / "ev"), marker)
        refused(run_cli("export-hf", "--checkpoint", given, "--out", tmp_path / "ex"), marker)
    from engine.inherit.source import open_parent
    with pytest.raises(ckpt.PickleCheckpoint, match="not accepted"):
        open_parent(step_dir)
    with pytest.raises(ckpt.PickleCheckpoint, match="not accepted"):
        ckpt.load(step_dir)
    assert not marker.exists()


def test_a_pickle_hugging_face_directory_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64, "num_hidden_layers": 1,
                                                "hidden_size": 16, "intermediate_size": 32,
                                                "num_attention_heads": 2, "num_key_value_heads": 2}))
    torch.save({"model.embed_tokens.weight": Payload(marker)}, hf / "pytorch_model.bin")
    proc = run_cli("import-hf", "--hf-dir", hf, "--out", tmp_path / "imp")
    assert proc.returncode == 2, proc.stderr
    assert "pytorch_model.bin, the pickle format, which is not accepted" in proc.stderr
    assert not marker.exists()


def test_codec_round_trips_exactly_and_refuses_what_it_cannot_store(tmp_path):
    tied = torch.randn(5, 3)
    state = {"model": {"embed.weight": tied, "lm_head.weight": tied, "norm": torch.rand(3).to(torch.bfloat16),
                       "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 4),
                       "mask": torch.tensor([True, False])},
             "train_state": {"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                     "python": __import__("random").getstate()},
                             "moments": {"w": (torch.randn(2), torch.rand(2))}, "nested": [1, (2.5, None), "x"],
                             "lr_scale": 0.1 * 3, "flag": True}}
    path = ckpt.save(tmp_path, 3, state, {"model_config": {}})
    _, parts = ckpt.load(path)
    from tests.engine.test_resume import assert_same  # type-strict: a tuple must come back a tuple, an array an array
    assert_same(state, parts)
    assert parts["model"]["embed.weight"] is parts["model"]["lm_head.weight"]  # tied: one tensor, stored once
    assert len(load_file(path / "model.safetensors")) == 5
    assert ckpt.load_tensor(path, "lm_head.weight").equal(tied)
    sd = GPT(model_config("micro", vocab_size=padded_vocab(ByteTokenizer().vocab_size))).state_dict()  # ordered
    back = ckpt.load(ckpt.save(tmp_path / "sd", 0, {"model": sd}, {}), ("model",))[1]["model"]
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(TypeError, match="cannot store 'a/b' of type object"):
        ckpt.save(tmp_path, 4, {"train_state": {"a": {"b": object()}}}, {})
    with pytest.raises(TypeError, match=r"cannot store the key '\$tensor'"):
        ckpt.save(tmp_path, 4, {"train_state": {"$tensor": "model"}}, {})
    with pytest.raises(TypeError, match="cannot store the key 1"):
        ckpt.save(tmp_path, 4, {"train_state": {1: 2}}, {})
    assert ckpt.list_checkpoints(tmp_path) == [path]


def test_no_unpickling_in_train_save_load_and_resume(tmp_path, micro_spec, monkeypatch):
    """Every unpickler in the process raises (and is counted) while a run trains, checkpoints, is cut back
    to an earlier checkpoint, resumes and is loaded again: all without one call, bit-identical to the
    uninterrupted run; every file of every checkpoint is safetensors (read by safetensors' own reader) or
    JSON."""
    import torch._weights_only_unpickler as weights_only

    calls = []

    def forbidden(original, name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while loading a checkpoint")
        if isinstance(original, type):  # a class stays a class: modules imported later may subclass it
            return type(original.__name__, (original,), {"__init__": call})
        return call
    for module, name in ((pickle, "Unpickler"), (pickle, "load"), (pickle, "loads"), (_pickle, "Unpickler"),
                         (_pickle, "load"), (_pickle, "loads"), (torch, "load"), (torch.serialization, "load"),
                         (weights_only, "Unpickler"), (weights_only, "load")):
        monkeypatch.setattr(module, name, forbidden(getattr(module, name), f"{module.__name__}.{name}"))

    from engine.train import train
    from tests.engine.test_resume import assert_same
    spec = micro_spec(steps=8, checkpoint_every=4, keep_checkpoints=5, eval_every=100, backend="cpu")
    train(spec, tmp_path / "full", **QUIET)
    train(spec, tmp_path / "cut", **QUIET)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000008")
    train(spec, tmp_path / "cut", **QUIET)  # resumes from step 4
    events = (tmp_path / "cut" / "events.jsonl").read_text()
    assert "resumed from step 4" in events
    _, full = ckpt.load(tmp_path / "full" / "checkpoints" / "step_00000008")
    _, cut = ckpt.load(tmp_path / "cut" / "checkpoints" / "step_00000008")
    assert_same(full, cut)  # weights, AdamW moments and step, RNG states, schedule: bit for bit
    assert calls == []

    for step_dir in ckpt.list_checkpoints(tmp_path / "full" / "checkpoints"):
        names = sorted(p.name for p in step_dir.iterdir())
        assert names == ["manifest.json", "model.json", "model.safetensors", "train_state.json",
                         "train_state.safetensors"], names
        tensors = load_file(step_dir / "train_state.safetensors")
        moments = sorted(k.removeprefix("optimizer/moments/") for k in tensors if k.startswith("optimizer/moments/"))
        params = GPT(ModelConfig.from_dict(ckpt.verify(step_dir)["model_config"])).named_parameters()
        assert moments == sorted(f"{name}/{i}" for name, _ in params for i in (0, 1))  # exp_avg, exp_avg_sq
        assert load_file(step_dir / "model.safetensors").keys() == full["model"].keys()
        assert tensors["rng/torch"].dtype == torch.uint8 and tensors["rng/numpy/1"].dtype == torch.uint32
        state = json.loads((step_dir / "train_state.json").read_text())
        assert state["step"] == int(step_dir.name[5:]) and state["schedule"] == {"offset": 0, "total": 8}
