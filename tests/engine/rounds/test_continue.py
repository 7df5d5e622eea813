"""Round 2 as the paper runs it: the next epoch of the same run. One learning-rate schedule across the
rounds, the AdamW moments carried over, and a resume inside the continued run still bit-identical."""
import shutil

import pytest

from engine import checkpoint as ckpt
from engine.rounds.run import run_rounds
from engine.rounds.spec import RoundsSpec
from engine.run_record import read_metrics
from engine.spec import TrainSpec
from engine.train import lr_at, train
from tests.conftest import SAMPLE
from tests.engine.test_resume import assert_identical

QUIET = dict(show_progress=False, log=lambda *a: None)
BASE = dict(model={"preset": "micro"}, data={"sources": [str(SAMPLE)]}, batch_size=8, micro_batch=8, log_every=1,
            eval_every=100, eval_batches=1, optim={"warmup_frac": 0.2})


def lrs(run):
    return {r["step"]: r["lr"] for r in read_metrics(run) if r.get("split") == "train"}


def optimizer_step(run) -> int:
    return ckpt.load(ckpt.list_checkpoints(run / "checkpoints")[-1])[1]["train_state"]["optimizer"]["step"]


def test_a_continued_run_follows_one_schedule_and_carries_the_moments(tmp_path):
    n, m = 6, 4
    first = train(TrainSpec.model_validate({**BASE, "steps": n, "optim": {**BASE["optim"], "schedule_steps": n + m}}),
                  tmp_path / "first", **QUIET)
    whole = tmp_path / "whole"
    train(TrainSpec.model_validate({**BASE, "steps": n + m}), whole, **QUIET)
    cont = TrainSpec.model_validate({**BASE, "steps": m, "checkpoint_every": 1, "keep_checkpoints": 10,
                                     "init": {"checkpoint": first["summary"]["checkpoint"], "continue_run": True}})
    second = train(cont, tmp_path / "second", **QUIET)

    # one schedule: the first run's learning rates then the continued run's are the single run's, step for step
    joined = {**lrs(tmp_path / "first"), **{n + s: lr for s, lr in lrs(tmp_path / "second").items()}}
    assert joined == pytest.approx(lrs(whole), rel=1e-12)
    assert second["summary"]["lr_schedule"] == {"offset": n, "total": n + m}
    # the moments came with it: AdamW's step counter goes on from the first run's
    assert optimizer_step(tmp_path / "first") == n and optimizer_step(tmp_path / "second") == n + m
    fresh = train(cont.model_copy(update={"init": cont.init.model_copy(update={"continue_run": False})}),
                  tmp_path / "fresh", **QUIET)
    assert optimizer_step(tmp_path / "fresh") == m and fresh["summary"]["val_loss"] != second["summary"]["val_loss"]

    # a schedule that had ended leaves the learning rate at its floor
    past = train(TrainSpec.model_validate({**BASE, "steps": 2, "init": {"checkpoint": second["summary"]["checkpoint"],
                                                                        "continue_run": True}}),
                 tmp_path / "past", **QUIET)
    floor = BASE_LR * 0.1
    assert list(lrs(tmp_path / "past").values()) == pytest.approx([floor, floor])
    assert past["summary"]["lr_schedule"] == {"offset": n + m, "total": n + m}

    # a resume inside the continued run: only step 2's checkpoint survives, the same command runs again
    cut = tmp_path / "cut"
    train(cont, cut, **QUIET)
    for p in ckpt.list_checkpoints(cut / "checkpoints"):
        if p.name != "step_00000002":
            shutil.rmtree(p)
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:2]))
    train(cont, cut, **QUIET)
    assert_identical(tmp_path / "second", cut)
    assert optimizer_step(cut) == n + m


BASE_LR = TrainSpec.model_validate(BASE).optim.lr


def test_rounds_continue_plans_one_schedule_over_round_one_and_the_replay(tmp_path):
    spec = RoundsSpec.model_validate({**BASE, "first_round_steps": 8, "rate": 0.5})
    assert spec.lr_schedule == "continue"  # the paper's default
    s = run_rounds(spec, tmp_path, log=lambda *a: None)["summary"]
    r1, r2 = lrs(tmp_path / "round_1"), lrs(tmp_path / "round_2")
    assert len(r2) == 4 and s["steps"] == 12  # one pass over the 4 drawn batches
    expected = [lr_at(i, 12, spec, BASE_LR) for i in range(12)]
    assert [r1[k] for k in sorted(r1)] + [r2[k] for k in sorted(r2)] == pytest.approx(expected, rel=1e-12)
    assert optimizer_step(tmp_path / "round_2") == 12
