"""The cumulative ablation (engine/ablate, `tinyforge ablate`): the presets are the parameter-matched
shapes the matcher computes, a job stage of kind `ablate` validates through the service's spec, a bad
field exits 2 naming it, and a real smoke-scale run writes five arms at equal parameters and FLOPs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, run_cli


@pytest.mark.parametrize("scale", ["smoke", "default"])
def test_presets_are_the_parameter_matched_shapes(scale):
    from engine.ablate.shapes import check_matched, matched_presets, shape_dict
    from engine.ablate.spec import SCALES
    from engine.arch import count_params
    from engine.config import model_config

    s = SCALES[scale]
    base, wide, deep = (model_config(p) for p in (s.base_preset, s.wide_preset, s.deep_preset))
    computed = matched_presets(base, s.compact_vocab, deep.n_layer)
    assert shape_dict(computed["wide_compact"]) == shape_dict(wide)
    assert shape_dict(computed["deep_compact"]) == shape_dict(deep)
    diffs = check_matched({"base": base, "wide": wide, "deep": deep})
    assert all(abs(d) <= 0.05 for d in diffs.values())
    # the point of the study: the compact arms move parameters from the embedding into the body
    assert count_params(wide).body > count_params(base).body and deep.n_layer > wide.n_layer > 0
    assert base.vocab_size == s.large_vocab and wide.vocab_size == deep.vocab_size == s.compact_vocab
    parent = model_config(s.parent_preset)  # the deep child must be cut out of the parent
    for name in ("n_layer", "n_embd", "ffn_hidden", "n_head"):
        assert getattr(deep, name) <= getattr(parent, name)
    assert parent.head_dim == deep.head_dim


def test_check_matched_refuses_a_shape_off_by_more_than_five_percent():
    from engine.ablate.shapes import check_matched
    from engine.config import ModelConfig

    a = ModelConfig(vocab_size=1024, n_layer=2, n_embd=64, n_head=4)
    b = ModelConfig(vocab_size=1024, n_layer=3, n_embd=64, n_head=4)
    with pytest.raises(ValueError, match="more than 5%"):
        check_matched({"a": a, "b": b})


def test_ablate_stage_validates_through_the_service_spec():
    from service.spec import SpecError, plan, validate_spec

    def run_plan(stages):
        return plan(validate_spec({"name": "abl", "stages": stages}), registry="engine.spec:STAGE_SPECS",
                    roots=(SAMPLE.resolve(),), cwd=REPO)

    p = run_plan([{"kind": "ablate", "config": {"scale": "smoke", "sources": ["data/sample"], "seeds": 2}}])
    st = p.stages[0]
    assert st.kind == "ablate" and st.validated_by == "engine.ablate.spec:AblateSpec"
    assert st.config["sources"] == [str(SAMPLE.resolve())]  # made absolute like any data path
    assert st.config["baseline_steps"] == 30 and st.config["seeds"] == 2  # scale defaults filled in
    with pytest.raises(SpecError) as e:
        run_plan([{"kind": "ablate", "config": {"scale": "huge", "replay_rate": 2}}])
    locs = {".".join(map(str, err["loc"])) for err in e.value.errors}
    assert {"body.stages.0.config.scale", "body.stages.0.config.replay_rate"} <= locs


@pytest.mark.parametrize("override, field", [("replay_rate=2", "error: replay_rate: "),
                                              ("bytes_seeds=3", "bytes_seeds: 3 is more than seeds=1")])
def test_bad_field_exits_2_naming_it(tmp_path, override, field):
    proc = run_cli("ablate", "--out", tmp_path / "out", "--set", override, "--scale", "smoke")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and field in last
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_smoke_scale_runs_five_arms_at_equal_params_and_flops(tmp_path):
    out = tmp_path / "abl"
    proc = run_cli("ablate", "--scale", "smoke", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/" in proc.stderr and "held-out" in proc.stderr  # progress per run
    study = json.loads((out / "ablation.json").read_text())
    arms = study["arms"]
    assert [a["key"] for a in arms] == ["arm1", "arm2", "arm3", "arm4", "arm5"]
    ref = arms[0]["params_total"]
    for a in arms:
        assert abs(a["params_total"] / ref - 1) <= 0.05
        assert a["params_total"] == a["params_body"] + a["params_embedding"]
        c = a["compute"]
        assert abs(c["flops"] / study["budget_flops"] - 1) <= 0.05
        assert math.isfinite(c["val_bpb"]) and 0 < c["val_bpb"] < 20
        assert c["bytes"] > 0 and c["tokens"] > 0
        assert a["bytes"] is not None and abs(a["bytes"]["bytes"] / study["target_bytes"] - 1) <= 0.1
    assert arms[1]["vocab"] < arms[0]["vocab"] and arms[2]["n_layer"] > arms[1]["n_layer"]
    # the compact tokenizer yields more tokens per byte; at equal FLOPs the arms see different bytes
    assert study["data"]["compact"]["train_bytes_per_token"] < study["data"]["large"]["train_bytes_per_token"]
    assert arms[4]["compute"]["runs"][0]["round2_steps"] > 0 and arms[4]["compute"]["extra_flops"] > 0
    assert study["parent"]["flops"] > 0 and study["parent"]["params"] > ref
    png = out / "ablation.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 5 + multi-round |" in (out / "ablation.md").read_text()
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "ablate" and {a["name"] for a in result["artifacts"]} >= {"ablation", "plot"}
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
            "scale": "smoke", "baseline_steps": 10, "parent_steps": 10, "bytes_seeds": 0}}]})
        done = svc.wait(job["id"], timeout=600)
        assert done["status"] == "succeeded", (done, svc.logs_of_workers())
        arts = {a["name"]: a for a in svc.http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        assert {"ablation", "plot"} <= set(arts)
        study = json.loads(Path(arts["ablation"]["path"]).read_text())
        assert len(study["arms"]) == 5 and study["spec"]["baseline_steps"] == 10
        assert all(a["bytes"] is None for a in study["arms"])  # bytes_seeds 0: no equal-bytes runs
    finally:
        svc.close()
