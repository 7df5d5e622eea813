"""Distillation while training an inherited child (config-switched by distill.teacher): the first
logged training loss is exactly the KL to the teacher's logits on the first batch (alpha 1), alpha 0
trains exactly as without a teacher, and evaluation stays plain cross-entropy."""
import json

import numpy as np
import torch

from engine import checkpoint as ckpt
from engine.config import ModelConfig
from engine.inherit.distill import kl_loss
from engine.inherit.run import inherit
from engine.inherit.spec import InheritSpec
from engine.model import GPT
from engine.run_record import read_metrics
from engine.train import train


def first_batch(spec, run_dir):
    from engine.data import BatchSampler, TokenData
    data_dir = json.loads((run_dir / "run.json").read_text())["data_dir"]
    data = TokenData.open(data_dir, "train", spec.seq_len)
    return data.batch(BatchSampler(len(data), spec.batch_size, spec.seed).windows(0))


def test_distillation_loss_and_switch(trained_run, micro_spec, tmp_path):
    parent_run, _ = trained_run
    parent = str(ckpt.list_checkpoints(parent_run / "checkpoints")[-1])
    res = inherit(InheritSpec(parent=parent, child={"n_embd": 48, "n_head": 2}, width="l2", eval_batches=0,
                              backend="cpu"), tmp_path / "child", log=lambda *a: None)
    child = res["summary"]["checkpoint"]

    def run(name, **distill):
        spec = micro_spec(init={"checkpoint": child}, steps=2, log_every=1, eval_every=2, seq_len=32,
                          precision="fp32", distill=distill)
        train(spec, tmp_path / name, show_progress=False, log=lambda *a: None)
        rows = read_metrics(tmp_path / name)
        return spec, [r["loss"] for r in rows if r["split"] == "train"], [r["loss"] for r in rows if r["split"] == "val"]

    spec, kd_train, kd_val = run("kd", teacher=parent, alpha=1.0, temperature=2.0)
    _, plain_train, plain_val = run("plain")
    _, zero_train, zero_val = run("alpha0", teacher=parent, alpha=0.0)
    assert zero_train == plain_train and zero_val == plain_val

    x, _ = first_batch(spec, tmp_path / "kd")
    manifest, parts = ckpt.load(child, ("model",))
    student = GPT(ModelConfig.from_dict(manifest["model_config"]))
    student.load_state_dict(parts["model"])
    tm, tp = ckpt.load(parent, ("model",))
    teacher = GPT(ModelConfig.from_dict(tm["model_config"]))
    teacher.load_state_dict(tp["model"])
    with torch.no_grad():
        want = np.mean([kl_loss(student(x[i:i + 4]), teacher(x[i:i + 4]), 2.0).item() for i in (0, 4)])
    assert abs(kd_train[0] - want) < 1e-5
    assert kd_train[0] != plain_train[0]
    # evaluation is the plain LM loss: the trained student, without hooks, scores what the run logged
    from engine.backend import resolve
    from engine.data import TokenData
    from engine.train import evaluate
    final = ckpt.load(ckpt.list_checkpoints(tmp_path / "kd" / "checkpoints")[-1], ("model",))[1]["model"]
    student.load_state_dict(final)
    data_dir = json.loads((tmp_path / "kd" / "run.json").read_text())["data_dir"]
    val = evaluate(student, TokenData.open(data_dir, "val", 32), spec.eval_batches, spec.micro_batch,
                   resolve("cpu", "fp32"))
    assert abs(val["loss"] - kd_val[-1]) < 1e-6
