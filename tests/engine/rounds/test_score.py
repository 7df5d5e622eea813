"""The scoring pass: per-sequence losses equal the model's loss, a pass stopped halfway (a real
SIGTERM) resumes from its saved chunks to identical scores and the identical drawn set, stale or
corrupt chunks are recomputed, reducible loss subtracts the reference's, and two torchrun ranks
gather the same scores as one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import SAMPLE
from engine.backend import resolve
from engine.data import BatchSampler, TokenData
from engine.rounds.run import Stage, sample_scores, score_checkpoint
from engine.evaluate import load_model
from engine.rounds.score import sequence_losses
from engine.rounds.spec import RoundsSpec
from engine.spec import SpecError, parse
from engine.train import Preempted


def rounds_spec(checkpoint, **kw) -> RoundsSpec:
    base = dict(model={"preset": "micro"}, data={"sources": [str(SAMPLE)]}, init={"checkpoint": str(checkpoint)},
                batch_size=8, micro_batch=4, score_chunk=16, backend="cpu", precision="fp32")
    base.update(kw)
    return RoundsSpec.model_validate(base)


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def checkpoint(trained_run):
    out, result = trained_run
    return result["summary"]["checkpoint"]


def test_sequence_losses_are_the_models_loss(checkpoint, trained_run):
    backend = resolve("cpu", "fp32")
    model, manifest = load_model(checkpoint, backend, frozen=True)
    data = TokenData.open(Path(manifest["data_dir"]), "train", model.config.block_size)
    x, y = data.batch(BatchSampler(len(data), 8, 1337).windows(3, epoch=0))
    per_seq = sequence_losses(model, x, y, backend)
    with torch.no_grad():
        whole = model(x, y).item()
    assert per_seq.shape == (8,) and per_seq.float().mean().item() == pytest.approx(whole, rel=1e-5)
    assert per_seq.std() > 0  # sequences differ


def test_the_output_head_in_slices_gives_each_rows_own_loss(checkpoint, monkeypatch):
    """A batch scored through the output head a few rows at a time (3, 3, 2 of 8) gives every row the loss
    of its own full logits: no row dropped or paired with another row's targets."""
    from engine.rounds import score

    backend = resolve("cpu", "fp32")
    model, manifest = load_model(checkpoint, backend, frozen=True)
    data = TokenData.open(Path(manifest["data_dir"]), "train", model.config.block_size)
    x, y = data.batch(BatchSampler(len(data), 8, 7).windows(0, epoch=0))
    monkeypatch.setattr(score, "LOGIT_BYTES", 3 * 4 * x.shape[1] * model.config.vocab_size)
    with torch.no_grad():
        logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    torch.testing.assert_close(sequence_losses(model, x, y, backend), expected, rtol=1e-5, atol=1e-6)


def test_a_stopped_scoring_pass_resumes_to_the_identical_draw(checkpoint, tmp_path):
    spec = rounds_spec(checkpoint)
    full = score_checkpoint(spec, tmp_path / "full", log=quiet)["summary"]
    assert full["n_pool_batches"] == 12 and full["n_items"] == 12 and full["chunks"] == 6  # 96 windows / 16
    assert full["resumed_chunks"] == 0 and full["tokens"] == 96 * 64
    sample_scores(spec, tmp_path / "full", log=quiet)
    drawn_full = np.load(tmp_path / "full" / "selected_ids.npy")

    # a real SIGTERM after the second chunk: the pass stops after the chunk in hand, as under a preemption
    stage = Stage(spec, tmp_path / "cut", quiet)
    stage.on_chunk = lambda done, n: done == 2 and os.kill(os.getpid(), signal.SIGTERM)
    pool = stage.parent_pool(checkpoint)
    with pytest.raises(Preempted, match="2 of 6 chunks saved"):
        stage.score(stage.out, checkpoint, pool, k=2)
    saved = sorted(p.name for p in (tmp_path / "cut" / "scores" / "model").glob("chunk_*.npy"))
    assert saved == ["chunk_000000.npy", "chunk_000001.npy"]
    assert not (tmp_path / "cut" / "item_scores.npy").exists()
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back

    resumed = score_checkpoint(spec, tmp_path / "cut", log=quiet)["summary"]
    assert resumed["resumed_chunks"] == 2 and resumed["tokens"] == 4 * 16 * 64
    assert np.array_equal(np.load(tmp_path / "cut" / "item_scores.npy"), np.load(tmp_path / "full" / "item_scores.npy"))
    sample_scores(spec, tmp_path / "cut", log=quiet)
    drawn = np.load(tmp_path / "cut" / "selected_ids.npy")
    assert np.array_equal(drawn, drawn_full) and len(np.unique(drawn)) == 6
    assert set(drawn.tolist()) <= set(range(12))  # the batches round 1 trained on

    # a finished pass is not recomputed; a corrupt chunk is, and a changed model discards every chunk
    again = score_checkpoint(spec, tmp_path / "cut", log=quiet)["summary"]
    assert again["tokens"] == 0 and again["resumed_chunks"] == 6
    (tmp_path / "cut" / "scores" / "model" / "losses.npy").unlink()
    (tmp_path / "cut" / "scores" / "model" / "chunk_000003.npy").write_bytes(b"truncated")
    fixed = score_checkpoint(spec, tmp_path / "cut", log=quiet)["summary"]
    assert fixed["resumed_chunks"] == 5 and fixed["tokens"] == 16 * 64
    assert np.array_equal(np.load(tmp_path / "cut" / "item_scores.npy"), np.load(tmp_path / "full" / "item_scores.npy"))
    earlier = str(Path(checkpoint).parent / "step_00000006")
    other = score_checkpoint(spec, tmp_path / "cut", checkpoint=earlier, log=quiet)["summary"]
    assert other["resumed_chunks"] == 0 and other["mean_score"] > full["mean_score"]  # 6 steps: a worse model


def test_reducible_loss_subtracts_the_reference(checkpoint, tmp_path):
    earlier = str(Path(checkpoint).parent / "step_00000006")
    score_checkpoint(rounds_spec(checkpoint), tmp_path / "a", log=quiet)
    score_checkpoint(rounds_spec(checkpoint), tmp_path / "b", checkpoint=earlier, log=quiet)
    score_checkpoint(rounds_spec(checkpoint, score="reducible", reference=earlier), tmp_path / "rho", log=quiet)
    rho = np.load(tmp_path / "rho" / "item_scores.npy")
    assert np.allclose(rho, np.load(tmp_path / "a" / "item_scores.npy") - np.load(tmp_path / "b" / "item_scores.npy"))
    assert (rho < 0).all()  # the later model is better on every batch it trained on


def test_per_sequence_scores_give_one_score_per_window(checkpoint, tmp_path):
    s = score_checkpoint(rounds_spec(checkpoint, granularity="sequence"), tmp_path, log=quiet)["summary"]
    assert s["n_items"] == 96
    seq = np.load(tmp_path / "item_scores.npy")
    per_batch = seq.reshape(12, 8).mean(1)
    assert per_batch.std() < seq.std()  # per-batch scores flatten the distribution


def test_bad_rounds_configs_name_the_field(checkpoint, tmp_path):
    cases = [({"rate": 1.5}, "rate"), ({"first_round_steps": 10}, "init.checkpoint"),
             ({"score": "reducible"}, "reference"), ({"data": {"batch_ids": "x.npy"}}, "data.batch_ids"),
             ({"temperature": 0}, "temperature"), ({"strategy": "hardest"}, "strategy"),
             ({"replay_rate": 0.5}, "replay_rate")]
    for extra, field in cases:
        data = {"init": {"checkpoint": checkpoint}, **extra}
        with pytest.raises(SpecError, match=field):
            parse("rounds", data)
    with pytest.raises(ValueError, match="pool: the checkpoint .* has no run record"):
        Stage(rounds_spec(checkpoint), tmp_path, quiet).parent_pool(str(tmp_path / "elsewhere" / "checkpoints" / "x"))
    with pytest.raises(ValueError, match="batch_size: round 1 .* used batch_size=8"):
        Stage(rounds_spec(checkpoint, batch_size=16), tmp_path, quiet).parent_pool(checkpoint)
    assert len(Stage(rounds_spec(checkpoint, pool="all"), tmp_path, quiet).parent_pool(checkpoint).batch_ids) > 1000


@pytest.mark.slow
def test_two_ranks_score_their_chunks_and_gather_the_same_scores(checkpoint, tmp_path):
    """torchrun, 2 gloo processes: chunk c is scored by rank c % 2, one all-reduce gives both ranks
    every score; the result equals a 1-process pass bit for bit (same windows, same micro-batches)."""
    cfg = tmp_path / "score.yaml"
    cfg.write_text(yaml.safe_dump(rounds_spec(checkpoint).model_dump(mode="json", exclude_defaults=True)))
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--standalone",
                           "-m", "engine.commands.rounds", "score", "--config", str(cfg), "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "two" / "result.json").read_text())["summary"]["tokens"] == 96 * 64
    score_checkpoint(rounds_spec(checkpoint), tmp_path / "one", log=quiet)
    assert np.array_equal(np.load(tmp_path / "two" / "item_scores.npy"), np.load(tmp_path / "one" / "item_scores.npy"))
    chunks = sorted(p.name for p in (tmp_path / "two" / "scores" / "model").glob("chunk_*.npy"))
    assert len(chunks) == 6  # written by both ranks (0, 2, 4 and 1, 3, 5)
