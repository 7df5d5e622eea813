"""`tinyforge inherit` end to end on a trained engine checkpoint: the flag form and the contract form
(--config --out) write a child checkpoint, report and result.json; the trainer starts from the child;
bad input exits 2 naming the field."""
import json

import yaml

from engine import checkpoint as ckpt
from tests.conftest import SAMPLE, run_cli


def test_inherit_flags_then_train_from_the_child(trained_run, tmp_path, micro_spec):
    run, _ = trained_run
    child_cfg = tmp_path / "child.json"
    child_cfg.write_text(json.dumps({"n_layer": 2, "n_embd": 48, "n_head": 2, "n_kv_head": 2, "ffn_hidden": 96}))
    out = tmp_path / "inh"
    proc = run_cli("inherit", "--parent", run, "--child-config", child_cfg, "--depth", "ends", "--width", "activation",
                   "--calib", SAMPLE, "--set", "calib.batches=2", "--set", "eval_batches=2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "held-out loss" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    s = result["summary"]
    assert result["kind"] == "inherit" and s["child_params"] < s["parent_params"]
    # the trained parent's knowledge survives: the inherited child beats a random init of its shape
    assert s["inherited_loss"] < s["random_init_loss"]
    assert {a["type"] for a in result["artifacts"]} == {"checkpoint", "report", "plot"}
    assert (out / "report.md").read_text().startswith("# Parameter inheritance")
    assert json.loads((out / "progress.json").read_text())["phase"] == "inherit:done"
    child = out / result["artifacts"][0]["path"]
    manifest = ckpt.verify(child)
    assert manifest["model_config"]["n_embd"] == 48 and manifest["model_config"]["head_dim"] == 16
    assert manifest["tokenizer"] == "byte"

    from engine.train import train
    res = train(micro_spec(init={"checkpoint": str(child)}, steps=4, eval_every=4), tmp_path / "train",
                show_progress=False, log=lambda *a: None)
    assert res["summary"]["params"] == s["child_params"]
    assert res["summary"]["val_loss"] < s["random_init_loss"]


def test_inherit_contract_form(trained_run, tmp_path):
    run, _ = trained_run
    cfg = tmp_path / "inherit.yaml"
    cfg.write_text(yaml.safe_dump({"parent": str(run), "child": {"preset": "micro", "n_layer": 1, "n_embd": 32},
                                   "depth": {"method": "explicit", "layers": [1]}, "width": "l1",
                                   "calib": {"sources": [str(SAMPLE / "en")]}, "eval_batches": 1}))
    proc = run_cli("inherit", "--config", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["depth"]["kept"] == [1] and report["child"]["config"]["n_embd"] == 32


def test_inherit_bad_input_exits_2_naming_the_field(trained_run, tmp_path):
    run, _ = trained_run
    cases = [(["--parent", run, "--width", "bogus"], "width"),
             (["--parent", run, "--child-preset", "small"], "child.n_layer"),
             (["--parent", tmp_path / "missing"], "parent"),
             (["--parent", run, "--layers", "0,x"], "--layers"),
             (["--parent", run, "--set", "depth.method=explicit"], "depth.layers")]
    for args, field in cases:
        proc = run_cli("inherit", *args, "--out", tmp_path / "bad")
        assert proc.returncode == 2, (args, proc.stderr)
        assert field in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "bad" / "result.json").exists()
