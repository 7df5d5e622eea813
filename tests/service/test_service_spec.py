"""Job spec validation and recipe expansion (no server): every error names its field."""
from __future__ import annotations

from pathlib import Path

import pytest

from service import refs
from service.body import SpecError, parse_body
from service.jobspec import parse_duration, validate_spec
from service.planning import plan

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
ENGINE = "engine.spec:STAGE_SPECS"


def run_plan(body: dict, roots=(SAMPLE,), registry=ENGINE):
    return plan(validate_spec(body), registry=registry, roots=tuple(Path(r).resolve() for r in roots), cwd=REPO)


def fields(exc: SpecError) -> dict[str, str]:
    return {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors}


def test_recipe_expands_to_the_pipeline_wired_by_references():
    p = run_plan({"name": "r", "recipe": {"tokenizer": {"compact_vocab": 512}, "parent": {"train": {"steps": 5}},
                                          "round1": {"steps": 7}}})
    assert [(s.name, s.kind) for s in p.stages] == [
        ("tokenizer", "tokenizer"), ("parent", "train"), ("inherit", "inherit"), ("round1", "train"),
        ("round2", "rounds"), ("export", "export"), ("eval", "eval")]
    by = {s.name: s for s in p.stages}
    assert by["round1"].config["steps"] == 7  # the user's section is merged over the wiring
    assert by["round1"].config["init"]["checkpoint"] == "${stages.inherit.artifacts.checkpoint}"
    assert by["round1"].config["data"]["tokenizer"] == "${stages.tokenizer.artifacts.tokenizer}"
    assert by["round2"].config["init"]["checkpoint"] == "${stages.round1.artifacts.checkpoint}"
    assert by["export"].config["checkpoint"] == "${stages.round2.artifacts.checkpoint}"
    assert by["inherit"].config["parent"] == "${stages.parent.artifacts.checkpoint}"
    assert by["inherit"].config["vocab"]["id_map"] == "${stages.tokenizer.artifacts.id_map}"
    assert by["inherit"].config["calib"]["tokenizer"] == "${stages.tokenizer.artifacts.large_tokenizer}"
    # relative data paths are stored absolute
    assert by["round1"].config["data"]["sources"] == [str(SAMPLE)]
    assert by["round1"].validated_by == "engine.spec:TrainSpec"


def test_recipe_with_existing_parent_has_no_parent_stage(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    p = run_plan({"name": "r", "recipe": {"tokenizer": {"compact_vocab": 512}, "parent": {"hf_dir": str(parent)}}},
                 roots=(SAMPLE, tmp_path))
    assert "parent" not in [s.name for s in p.stages]
    assert next(s for s in p.stages if s.name == "inherit").config["parent"] == str(parent.resolve())


def test_engine_schema_errors_carry_the_field_path():
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "stages": [{"kind": "train", "config": {"steps": -1, "micro_batch": "many",
                                                                        "model": {"preset": "no-such-preset"},
                                                                        "bogus": 1}}]})
    f = fields(e.value)
    assert "greater than 0" in f["body.stages.0.config.steps"]
    assert "body.stages.0.config.micro_batch" in f
    assert "Extra inputs" in f["body.stages.0.config.bogus"]
    assert "unknown preset 'no-such-preset'" in f["body.stages.0.config.model.preset"]


def test_recipe_errors_point_into_the_recipe():
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "recipe": {"tokenizer": {"compact_vocab": 0}, "parent": {"train": {}},
                                          "round1": {"steps": 0}}})
    assert "body.recipe.round1.steps" in fields(e.value) and "body.recipe.tokenizer.compact_vocab" in fields(e.value)


@pytest.mark.parametrize("path", ["/etc", "../../etc/passwd", "data/sample/../../../etc"])
def test_paths_outside_the_data_roots_are_refused(path):
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "stages": [{"kind": "train", "config": {"data": {"sources": [path]}}}]})
    msg = fields(e.value)["body.stages.0.config.data.sources.0"]
    assert "outside the data roots" in msg


def test_symlink_escaping_a_root_is_refused(tmp_path):
    (tmp_path / "escape").symlink_to("/etc")
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "stages": [{"kind": "train", "config": {"data": {"sources": [
            str(tmp_path / "escape")]}}}]}, roots=(SAMPLE, tmp_path))
    assert "resolves to /etc" in fields(e.value)["body.stages.0.config.data.sources.0"]


def test_missing_input_path_is_refused_but_cache_dir_may_be_new(tmp_path):
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "stages": [{"kind": "eval", "config": {"checkpoint": str(tmp_path / "nope")}}]},
                 roots=(SAMPLE, tmp_path))
    assert "does not exist" in fields(e.value)["body.stages.0.config.checkpoint"]
    p = run_plan({"name": "x", "stages": [{"kind": "train", "config": {"data": {"cache_dir": str(tmp_path / "new")}}}]},
                 roots=(SAMPLE, tmp_path))
    assert p.stages[0].config["data"]["cache_dir"] == str((tmp_path / "new").resolve())


def test_references_must_name_an_earlier_stage():
    body = {"name": "x", "stages": [
        {"kind": "eval", "config": {"checkpoint": "${stages.train.artifacts.checkpoint}"}},
        {"kind": "train", "config": {}},
        {"kind": "export", "config": {"checkpoint": "${stages.train.oops}"}}]}
    with pytest.raises(SpecError) as e:
        run_plan(body)
    f = fields(e.value)
    assert "must name an earlier stage" in f["body.stages.0.config.checkpoint"]
    assert "is not a reference" in f["body.stages.2.config.checkpoint"]


def test_job_level_errors():
    cases = [
        ({"name": "x"}, "body", "either stages or recipe"),
        ({"name": "", "stages": [{"kind": "train"}]}, "body.name", "at least 1"),
        ({"name": "x", "stages": [{"kind": "bake"}]}, "body.stages.0.kind", "'tokenizer'"),
        ({"name": "x", "stages": [{"kind": "train"}], "resources": {"nodes": 2}}, "body.resources", "launcher: slurm"),
        ({"name": "x", "stages": [{"kind": "train"}], "resources": {"devices_per_node": 0}},
         "body.resources.devices_per_node", "greater than or equal to 1"),
        ({"name": "x", "stages": [{"kind": "train"}], "resources": {"time_limit": "soon"}},
         "body.resources.time_limit", "duration"),
        ({"name": "x", "stages": [{"kind": "train"}], "webhook": {"url": "ftp://x"}}, "body.webhook.url", "match"),
        ({"name": "x", "stages": [{"kind": "train"}], "colour": "red"}, "body.colour", "Extra inputs"),
        ({"name": "x", "stages": [{"kind": "train", "name": "a b"}]}, "body.stages.0.name", "match"),
    ]
    for body, field, words in cases:
        with pytest.raises(SpecError) as e:
            run_plan(body)
        f = fields(e.value)
        assert field in f and words in f[field], (body, f)


def test_duplicate_stage_names_are_refused():
    with pytest.raises(SpecError) as e:
        run_plan({"name": "x", "stages": [{"kind": "train"}, {"kind": "train"}]})
    assert "used twice" in fields(e.value)["body.stages.1.name"]


def test_bodies_that_do_not_parse():
    for body, ctype, words in [(b"{", "application/json", "invalid JSON"), (b"a: [", "application/yaml", "invalid YAML"),
                               (b"", "application/json", "empty body"), (b"\xff\xfe", "application/json", "UTF-8")]:
        with pytest.raises(SpecError) as e:
            parse_body(body, ctype)
        assert words in e.value.errors[0]["msg"]
    with pytest.raises(SpecError):
        validate_spec([1, 2])


def test_durations():
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(12) == 12
    for bad in ("", "-5", "1x", 0):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_reference_substitution():
    cfg = {"a": "${stages.t.run_dir}", "b": ["x-${stages.t.summary.n}-y"], "c": "${stages.t.summary.n}"}
    found = refs.find(cfg)
    assert [(".".join(map(str, loc)), r.stage) for loc, r in found] == [("a", "t"), ("b.0", "t"), ("c", "t")]
    values = {"run_dir": "/runs/t", "summary": 3}
    out = refs.substitute(cfg, lambda r: values[r.what])
    assert out == {"a": "/runs/t", "b": ["x-3-y"], "c": 3}  # a whole-string reference keeps its type


def test_fake_registry_accepts_its_own_knobs():
    p = run_plan({"name": "x", "stages": [{"kind": "train", "config": {"steps": 3, "step_time": 0}}]},
                 registry="tests.support.fake_specs:STAGE_SPECS")
    assert p.stages[0].config["steps"] == 3 and p.stages[0].validated_by == "tests.support.fake_specs:FakeStage"
