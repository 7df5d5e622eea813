import json

import yaml

from tests.conftest import SAMPLE, run_cli


def test_eval_command_matches_the_trainer_held_out_loss(trained_run, tmp_path):
    run, result = trained_run
    cfg = tmp_path / "eval.yaml"
    # the same windows the trainer evaluated (eval_batches=2 x micro_batch=4)
    cfg.write_text(yaml.safe_dump({"checkpoint": str(run), "data": {"sources": [str(SAMPLE)]}, "batches": 2,
                                   "micro_batch": 4}))
    proc = run_cli("eval", "--config", cfg, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "ev" / "result.json").read_text())["summary"]
    assert summary["checkpoint"].endswith("step_00000012")
    assert abs(summary["val_loss"] - result["summary"]["val_loss"]) < 2e-2  # bf16 autocast, batch grouping


def test_eval_of_a_missing_checkpoint_names_the_field(tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"checkpoint": str(tmp_path / "nope")}))
    proc = run_cli("eval", "--config", cfg, "--out", tmp_path / "ev")
    assert proc.returncode == 2 and "checkpoint:" in proc.stderr and "does not exist" in proc.stderr


def test_generate_is_seeded_and_greedy_follows_argmax(trained_run):
    import torch

    from engine.evaluate import load_model
    from engine.generate import generate_text, sample

    run, _ = trained_run
    a = generate_text(str(run), "To be", max_new_tokens=20, seed=3)
    assert a.startswith("To be") and a == generate_text(str(run), "To be", max_new_tokens=20, seed=3)
    model, _ = load_model(run)
    idx = torch.tensor([list(b"To be")])
    out = sample(model, idx, 5, temperature=0)
    with torch.no_grad():
        assert out[0, 5].item() == model(idx)[0, -1].argmax().item()
