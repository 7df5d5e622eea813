"""Rounds end to end on the micro preset: `tinyforge rounds` trains round 1 and a replay round 2
(records, lineage, forgetting curve, resume by re-running), the `score` / `sample` pieces give the
round's drawn set, and a round 2 from an earlier stage's checkpoint with per-sequence draws, fresh
data and a continued learning rate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import SAMPLE, run_cli
from engine import checkpoint as ckpt
from engine.data import BatchSampler, TokenData
from engine.rounds.run import run_rounds
from engine.rounds.spec import RoundsSpec
from engine.run_record import read_metrics

MICRO = dict(model={"preset": "micro"}, data={"sources": [str(SAMPLE)]}, batch_size=8, micro_batch=4, log_every=2,
             eval_every=6, eval_batches=2, checkpoint_every=6, precision="fp32", backend="cpu", score_chunk=32)


@pytest.mark.slow
def test_two_rounds_with_the_cli_record_lineage_and_resume(tmp_path):
    config = tmp_path / "rounds.yaml"
    config.write_text(yaml.safe_dump({**MICRO, "first_round_steps": 12, "rounds": 1, "rate": 0.5}))
    out = tmp_path / "run"
    proc = run_cli("rounds", "--config", config, "--out", out, check=True)
    assert "round 2: 6 steps" in proc.stdout and "drawn 6 (hard)" in proc.stdout

    result = json.loads((out / "result.json").read_text())
    s = result["summary"]
    assert result["kind"] == "rounds" and [r["round"] for r in s["rounds"]] == [1, 2]
    r1, r2 = (json.loads((out / f"round_{k}" / "result.json").read_text()) for k in (1, 2))
    assert r1["kind"] == r2["kind"] == "round"
    first, second = r1["summary"]["checkpoint"], r2["summary"]["checkpoint"]
    assert s["lineage"][1] == {"round": 2, "checkpoint": second, "parent": first}
    assert r2["summary"]["parent"] == first and first in r2["inputs"]
    arts = {a["name"]: a for a in result["artifacts"]}
    assert ckpt.verify(out / arts["checkpoint"]["path"])["step"] == 6
    assert (out / arts["forgetting_curve"]["path"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / "round_2" / "score_hist.png").read_bytes()[:4] == b"\x89PNG"

    # round 2 trained on what was drawn: 6 distinct batches among the 12 that round 1 trained on
    drawn = np.load(out / "round_2" / "selected_ids.npy")
    assert len(drawn) == len(set(drawn.tolist())) == 6 and set(drawn.tolist()) <= set(range(12))
    assert np.array_equal(np.load(out / "round_2" / "pool_ids.npy"), np.arange(12))
    run2 = json.loads((out / "round_2" / "run.json").read_text())["config"]
    assert run2["data"]["batch_ids"] == str(out.resolve() / "round_2" / "selected_ids.npy")
    assert run2["init"]["checkpoint"] == first and run2["steps"] == 6
    sel = json.loads((out / "round_2" / "selection.json").read_text())
    scores = np.load(out / "round_2" / "item_scores.npy")
    assert sel["diagnostics"]["mean_score_selected"] == pytest.approx(scores[drawn].mean())
    assert sel["diagnostics"]["mean_score_pool"] == pytest.approx(scores.mean())
    assert 0 < sel["diagnostics"]["ess_fraction"] <= 1 and sel["scoring"]["tokens"] == 12 * 8 * 64

    # the stage's metrics: both rounds at global steps, with the forgetting probe of each
    rows = read_metrics(out)
    probe = [(r["round"], r["step"]) for r in rows if r["split"] == "probe"]
    assert probe == [(1, 6), (1, 12), (2, 18)]
    assert max(r["step"] for r in rows if r["round"] == 2) == 18

    # re-running the same command resumes: nothing retrained, nothing recorded twice
    again = run_cli("rounds", "--config", config, "--out", out, check=True)
    assert json.loads((out / "result.json").read_text())["summary"]["checkpoint"] == second
    assert len(read_metrics(out)) == len(rows) and "round 2: 6 steps" in again.stdout

    # the pieces alone, from round 1's checkpoint, draw the same set
    run_cli("rounds", "score", "--config", config, "--out", tmp_path / "pieces", "--checkpoint", first, check=True)
    proc = run_cli("rounds", "sample", "--config", config, "--out", tmp_path / "pieces", "--checkpoint", first,
                   "--round", "2", check=True)
    assert "drew 6 (hard, seed 1339)" in proc.stdout
    assert np.array_equal(np.load(tmp_path / "pieces" / "selected_ids.npy"), drawn)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MICRO, "first_round_steps": 12, "rate": 0}))
    proc = run_cli("rounds", "--config", bad, "--out", tmp_path / "bad")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: rate:")


def test_round_two_from_a_checkpoint_draws_sequences_mixes_fresh_data_and_continues_the_lr(trained_run, tmp_path):
    run_dir, result = trained_run
    spec = RoundsSpec.model_validate({**MICRO, "init": {"checkpoint": result["summary"]["checkpoint"]},
                                      "granularity": "sequence", "fresh_fraction": 0.25, "temperature": 0.5,
                                      "lr_schedule": "constant", "steps": 4})
    s = run_rounds(spec, tmp_path, log=lambda *a: None)["summary"]
    rdir = tmp_path / "round_2"
    drawn = np.load(rdir / "selected_ids.npy")
    sel = json.loads((rdir / "selection.json").read_text())
    # 48 of 96 pool sequences: 36 replayed by score, 12 fresh from two batches round 1 never trained on
    assert sel["n_replay"] == 36 and sel["n_fresh_batches"] == 2 and len(drawn) == 36 + 12
    assert len(np.unique(drawn)) == len(drawn)
    data = TokenData.open(Path(json.loads((run_dir / "run.json").read_text())["data_dir"]), "train", 64)
    sampler = BatchSampler(len(data), 8, 1337)
    pool_windows = set(np.concatenate([sampler.windows(b, epoch=0) for b in range(12)]).tolist())
    fresh = np.load(rdir / "fresh_ids.npy")
    assert set(drawn[:36].tolist()) <= pool_windows and not set(drawn[36:].tolist()) & pool_windows
    assert (fresh >= 12).all()
    config = json.loads((rdir / "run.json").read_text())["config"]
    last_lr = [r["lr"] for r in read_metrics(run_dir) if r.get("split") == "train"][-1]
    assert config["data"]["window_ids"] and config["data"]["batch_ids"] is None
    assert config["optim"]["lr"] == pytest.approx(last_lr) and config["optim"]["warmup_frac"] == 0
    assert [r["lr"] for r in read_metrics(rdir) if r["split"] == "train"] == pytest.approx([last_lr] * 2)
    assert s["rounds"][0]["round"] == 2 and s["lineage"][0]["trained_by"] == "an earlier stage"
    assert s["scoring_tokens"] == 96 * 64 and s["score_vs_train_throughput"] > 0
