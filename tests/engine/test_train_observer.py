"""train()'s observer: it sees every record the run writes, each just before it is written, and what its
on_result returns is the one result.json written; the rounds stage follows each round through it (one
metrics series at global steps, also across a resumed round), and the ablation's done marker carries the
wall time in that same single write."""
from __future__ import annotations

import json
import os
import shutil

import torch

from engine import checkpoint as ckpt
from engine.ablate.run import Job, run_job
from engine.rounds.run import run_rounds
from engine.rounds.spec import RoundsSpec
from engine.run_record import RunObserver, read_metrics
from engine.train import train
from tests.conftest import SAMPLE

QUIET = dict(show_progress=False, log=lambda *a, **k: None)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Recorder(RunObserver):
    """Keeps what it is shown and checks, each time, that the run has not written it yet."""

    def __init__(self, out):
        self.out, self.metrics, self.events, self.progress, self.results = out, [], [], [], []

    def on_metric(self, row):
        assert row not in lines(self.out / "metrics.jsonl")
        assert len(lines(self.out / "metrics.jsonl")) == len(self.metrics)
        self.metrics.append(row)

    def on_event(self, row):
        assert len(lines(self.out / "events.jsonl")) == len(self.events)
        self.events.append(row)

    def on_progress(self, row):
        self.progress.append(row)

    def on_result(self, result):
        assert not (self.out / "result.json").exists()
        self.results.append(result)
        return {**result, "summary": {**result["summary"], "observed_rows": len(self.metrics)}}


def test_the_observer_sees_each_record_before_it_is_written_and_adds_to_the_one_result(micro_spec, tmp_path):
    out = tmp_path / "run"
    seen = Recorder(out)
    res = train(micro_spec(steps=4, log_every=1, eval_every=2, checkpoint_every=2), out, observer=seen, **QUIET)

    assert seen.metrics == read_metrics(out) and len(seen.metrics) == 4 + 2  # 4 train rows, 2 val rows
    assert seen.events == lines(out / "events.jsonl") and "compile" in [e["event"] for e in seen.events]
    assert [p["step"] for p in seen.progress] == [1, 2, 3, 4] and seen.progress[-1] == json.loads((out / "progress.json").read_text())
    # what on_result returned is what was written and returned, in one write
    written = json.loads((out / "result.json").read_text())
    assert len(seen.results) == 1 and seen.results[0]["kind"] == "train"
    assert written == res and res["summary"]["observed_rows"] == 6
    assert {k: v for k, v in res["summary"].items() if k != "observed_rows"} == seen.results[0]["summary"]


ROUNDS = dict(model={"preset": "micro"}, data={"sources": [str(SAMPLE)]}, batch_size=8, micro_batch=8, log_every=1,
              eval_every=2, eval_batches=1, checkpoint_every=2, keep_checkpoints=10, first_round_steps=8, rate=0.5,
              backend="cpu", precision="fp32")


def test_rounds_follow_each_round_through_the_observer_also_across_a_resumed_round(tmp_path):
    spec = RoundsSpec.model_validate(ROUNDS)
    first = run_rounds(spec, tmp_path, log=lambda *a: None)
    stage = read_metrics(tmp_path)
    # one series at global steps: round 1's rows, then round 2's shifted by round 1's 8 steps
    for k, offset in ((1, 0), (2, 8)):
        own = read_metrics(tmp_path / f"round_{k}")
        assert [{**r, "step": r["step"] + offset, "round": k} for r in own] == [r for r in stage if r["round"] == k]
    r2 = json.loads((tmp_path / "round_2" / "result.json").read_text())
    assert r2["kind"] == "round" and r2["summary"]["global_step_offset"] == 8 and r2["summary"]["train_tokens_per_s"]
    assert {"selected_ids", "selection"} <= {a["name"] for a in r2["artifacts"]}
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 12

    # round 2 killed after its step-2 checkpoint: the stage had recorded further (it is written first), the
    # round's own files stop at the checkpoint; the same command resumes the round and records nothing twice
    rdir = tmp_path / "round_2"
    for p in ckpt.list_checkpoints(rdir / "checkpoints"):
        if p.name != "step_00000002":
            shutil.rmtree(p)
    (rdir / "result.json").unlink()
    (tmp_path / "result.json").unlink()
    kept = [r for r in read_metrics(rdir) if r["step"] <= 2]
    (rdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    again = run_rounds(spec, tmp_path, log=lambda *a: None)
    assert [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(tmp_path)] == \
        [{k: v for k, v in r.items() if k != "time"} for r in stage]
    r2 = json.loads((rdir / "result.json").read_text())
    assert r2["kind"] == "round" and r2["summary"]["train_tokens_per_s"]
    assert again["summary"]["val_loss"] == first["summary"]["val_loss"]  # the resume is bit-identical


def test_the_ablations_done_marker_is_written_once_with_the_wall_time(micro_spec, tmp_path, monkeypatch):
    run_dir = tmp_path / "arm"
    job = Job("train", run_dir, micro_spec(steps=2, log_every=1, eval_every=2, checkpoint_every=2)
              .model_dump(mode="json"), "arm", threads=torch.get_num_threads())
    replaced, real_replace = [], os.replace

    def replace(src, dst):  # the real rename, counted
        replaced.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    summary = run_job(job)
    assert replaced.count("result.json") == 1
    written = json.loads((run_dir / "result.json").read_text())
    assert written["kind"] == "train" and written["summary"] == summary and summary["seconds"] > 0
    # a finished run is read back, not run again
    assert run_job(job) == summary and replaced.count("result.json") == 1
