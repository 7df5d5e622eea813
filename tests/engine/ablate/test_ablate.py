"""The cumulative ablation (engine/ablate, `tinyforge ablate`): the shapes are parameter-matched, a job
stage of kind `ablate` validates through the service's spec, a bad field exits 2 naming it, and a real
smoke-scale run writes the five arms and the uniform control at equal parameters and training tokens, at
two budgets, with guards, exports and the metric recomputed by transformers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, run_cli


def test_the_default_scale_trains_at_the_machines_precision_and_compiled():
    """The committed study runs with the fastest correct settings: precision auto (bf16 where the CPU has it)
    and compiled (its runs share four shapes, so the compile cache pays each shape's compile once); the
    smoke scale stays eager (24-step runs)."""
    from engine.ablate.run import Ablation
    from engine.ablate.spec import AblateSpec
    from engine.config import model_config

    shape = model_config("micro", vocab_size=256)
    for scale, compiled in (("default", True), ("smoke", False)):
        cfg = Ablation(AblateSpec(scale=scale), "/nonexistent").train_config(shape, "byte", 10, 0, 1)
        assert cfg["precision"] == "auto" and cfg["compile"] is compiled
    assert AblateSpec(scale="default", compile="auto", precision="fp32").compile == "auto"


@pytest.mark.parametrize("scale", ["smoke", "default"])
def test_shapes_match_arm_one_and_the_parent_holds_the_child(scale):
    from engine.ablate.run import Ablation
    from engine.ablate.shapes import check_matched
    from engine.ablate.spec import SCALES, AblateSpec
    from engine.arch import count_params

    s = SCALES[scale]
    compact = round(s.large_vocab * 0.8)  # compaction by coverage keeps most of a corpus-fitted BPE
    shapes = Ablation(AblateSpec(scale=scale), "/nonexistent").shapes({"large": s.large_vocab, "compact": compact})
    base, wide, deep, parent = (shapes[k] for k in ("base", "wide", "deep", "parent"))
    diffs = check_matched({"base": base, "wide": wide, "deep": deep})
    assert all(abs(d) <= 0.05 for d in diffs.values())
    assert base.tie_embeddings and wide.tie_embeddings and deep.tie_embeddings  # parameters track FLOPs
    # the point of the study: the compact arms move parameters from the embedding into the body, deeper
    assert count_params(wide).body > count_params(base).body
    assert 2 <= deep.n_layer / base.n_layer <= 3 and deep.n_embd < base.n_embd
    assert wide.n_layer == base.n_layer and wide.vocab_size == deep.vocab_size < base.vocab_size
    for name in ("n_layer", "n_embd", "ffn_hidden", "n_head"):  # the deep child is cut out of the parent
        assert getattr(deep, name) <= getattr(parent, name)
    assert parent.head_dim == deep.head_dim and count_params(parent).total >= 3 * count_params(deep).total
    if scale == "default":  # near the paper's 1B baseline's embedding share (about 40%)
        assert 0.35 <= count_params(base).embedding_share <= 0.45


def test_check_matched_refuses_a_shape_off_by_more_than_five_percent():
    from engine.ablate.shapes import check_matched
    from engine.config import ModelConfig

    a = ModelConfig(vocab_size=1024, n_layer=2, n_embd=64, n_head=4)
    b = ModelConfig(vocab_size=1024, n_layer=3, n_embd=64, n_head=4)
    with pytest.raises(ValueError, match="more than 5%"):
        check_matched({"a": a, "b": b})


def test_ablate_stage_validates_through_the_service_spec():
    from service.body import SpecError
    from service.jobspec import validate_spec
    from service.planning import plan

    def run_plan(stages):
        return plan(validate_spec({"name": "abl", "stages": stages}), registry="engine.spec:STAGE_SPECS",
                    roots=(SAMPLE.resolve(),), cwd=REPO)

    p = run_plan([{"kind": "ablate", "config": {"scale": "smoke", "sources": ["data/sample"], "seeds": 2}}])
    st = p.stages[0]
    assert st.kind == "ablate" and st.validated_by == "engine.ablate.spec:AblateSpec"
    assert st.config["sources"] == [str(SAMPLE.resolve())]  # made absolute like any data path
    assert st.config["budget_steps"] == 24 and st.config["seeds"] == 2  # scale defaults filled in
    with pytest.raises(SpecError) as e:
        run_plan([{"kind": "ablate", "config": {"scale": "huge", "replay_rate": 2}}])
    locs = {".".join(map(str, err["loc"])) for err in e.value.errors}
    assert {"body.stages.0.config.scale", "body.stages.0.config.replay_rate"} <= locs


@pytest.mark.parametrize("override, field", [("replay_rate=2", "error: replay_rate: "),
                                              ("curve_seeds=3", "curve_seeds: 3 is more than seeds=1"),
                                              ("budgets=[0.5,0.25]", "budgets: [0.5, 0.25] must ascend")])
def test_bad_field_exits_2_naming_it(tmp_path, override, field):
    proc = run_cli("ablate", "--out", tmp_path / "out", "--set", override, "--scale", "smoke")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and field in last
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_smoke_scale_runs_every_arm_the_control_and_the_budget_curve(tmp_path):
    out = tmp_path / "abl"
    proc = run_cli("ablate", "--scale", "smoke", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/" in proc.stderr and "held-out" in proc.stderr and "eta" in proc.stderr  # progress per run
    study = json.loads((out / "ablation.json").read_text())
    arms = study["arms"]
    assert [a["key"] for a in arms] == ["arm1", "arm2", "arm3", "arm4", "arm5", "control"]
    ref = arms[0]["params_total"]
    for a in arms:
        assert abs(a["params_total"] / ref - 1) <= 0.05
        assert a["params_total"] == a["params_body"] + a["params_embedding"]
        assert set(a["curve"]) == {"0.5", "1"}
        c = a["full"]
        assert math.isfinite(c["val_bpb"]) and 0 < c["val_bpb"] < 20 and c["tokens_per_param"] > 0
        assert c["bytes"] > 0 and c["tokens"] > 0 and c["epochs"] > 0
    # equal training tokens for arms 1-4; arm 5 and the control continue arm 4 by the same half pass
    assert len({a["full"]["tokens"] for a in arms[:4]}) == 1
    r5, rc = arms[4]["full"]["runs"][0], arms[5]["full"]["runs"][0]
    assert r5["steps"] == rc["steps"] == round(arms[3]["full"]["steps"] * 0.5)
    assert r5["total_tokens"] == arms[3]["full"]["tokens"] + r5["tokens"]
    assert arms[4]["full"]["extra_flops"] > 0 and arms[5]["full"]["extra_flops"] == 0  # only hard draws score
    round2 = json.loads((out / "runs" / "budget1" / "seed0" / "arm5" / "round_2" / "run.json").read_text())
    assert round2["config"]["init"]["continue_run"] is True  # the next epoch of arm 4's run
    # guards: floors of both tokenizers, the claims with their verdicts, the parent larger than the child
    for d in study["data"].values():
        assert 0 < d["bigram_bpb"] < d["unigram_bpb"]
    assert [c["arm"] for c in study["claims"]] == ["arm2", "arm3", "arm4", "arm5", "arm5"]
    assert all(c["full"]["verdict"] in ("gain", "loss", "within the seed spread") for c in study["claims"])
    assert study["parent"]["params"] >= 3 * arms[3]["params_total"]
    assert study["verdict"] and study["verdict"][0].startswith(("WARNING", "regime"))
    # every arm exported; the metric recomputed by transformers from the export agrees with the engine's
    for a in arms:
        assert (Path(a["full"]["runs"][0]["export"]) / "model.safetensors").exists()
    assert len(study["independent_check"]) == 6
    # fp32 both: the same figure to rounding; the run's own figure is at its training precision
    assert all(abs(c["difference"]) < 1e-5 for c in study["independent_check"]), study["independent_check"]
    assert all(abs(c["engine_bpb"] - c["engine_fp32_bpb"]) < 0.05 for c in study["independent_check"])
    for name in ("ablation.png", "budget_curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000
    md = (out / "ablation.md").read_text()
    assert "| 5 + multi-round (hard) |" in md and "Budget curve" in md and "bigram floor" in md
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "ablate" and {a["name"] for a in result["artifacts"]} >= {"ablation", "plot",
                                                                                       "budget_curve"}
    assert "| 1 baseline |" in proc.stdout  # the table is printed


def _service_helpers():
    """tests/service/conftest.py's Service (a real `tinyforge serve` subprocess), under the name its
    modules import it by."""
    import importlib.util
    import sys

    if "service_test_fixtures" not in sys.modules:
        path = REPO / "tests" / "service" / "conftest.py"
        spec = importlib.util.spec_from_file_location("service_test_fixtures", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["service_test_fixtures"] = module
        spec.loader.exec_module(module)
    return sys.modules["service_test_fixtures"]


@pytest.mark.slow
def test_ablate_stage_runs_through_the_service(tmp_path):
    """POST /v1/jobs with a stage of kind ablate -> the worker runs `tinyforge ablate --config --out`."""
    import sys

    h = _service_helpers()
    svc = h.Service(tmp_path / "home", f"sqlite:///{tmp_path / 'tf.db'}", embedded_worker=True,
                    TINYFORGE_STAGE_SPECS="engine.spec:STAGE_SPECS",
                    TINYFORGE_ENGINE_COMMAND=f"{sys.executable} -m tinyforge.cli", TINYFORGE_LEASE_S="60")
    try:
        job = svc.submit({"name": "ablate-smoke", "stages": [{"kind": "ablate", "config": {
            "scale": "smoke", "budget_steps": 10, "parent_steps": 10, "budgets": [1.0], "export": False}}]})
        done = svc.wait(job["id"], timeout=600)
        assert done["status"] == "succeeded", (done, svc.logs_of_workers())
        arts = {a["name"]: a for a in svc.http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        assert {"ablation", "plot"} <= set(arts)
        study = json.loads(Path(arts["ablation"]["path"]).read_text())
        assert len(study["arms"]) == 6 and study["spec"]["budget_steps"] == 10
        assert study["independent_check"] == []  # export: false
    finally:
        svc.close()
