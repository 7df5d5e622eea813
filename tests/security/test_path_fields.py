"""Every path field of every stage kind stays inside the data roots, found from the engine's schemas (not
from a list kept here): for each kind of the engine's registry and each field its schema marks as a path
(engine/fields.py), a job naming a file outside the roots in that one field is a 422 naming the field. A
field added to a schema later is covered without touching this file. And the check is made again when a
stage starts: a directory swapped for a symlink leading out after submission fails the stage, naming the
field, and the file outside is never opened."""
from __future__ import annotations

import copy
import errno
import os
import sys
import time
from pathlib import Path

import pytest

from engine.fields import EACH, marked_fields
from engine.importing import import_object
from engine.stages import STAGES
from security_fixtures import Service, data_home

PY_ENGINE = "engine.spec:STAGE_SPECS"


def base_configs(home) -> dict[str, dict]:
    """A config each kind accepts with every path inside the roots (a new kind must add one here)."""
    corpus, ckpt = str(home / "corpus"), str(home / "ckpt")
    return {
        "tokenizer": {"sources": [corpus]},
        "train": {"model": {"preset": "micro"}, "data": {"sources": [corpus]}, "steps": 2},
        "inherit": {"parent": ckpt, "calib": {"sources": [corpus]}},
        "rounds": {"model": {"preset": "micro"}, "data": {"sources": [corpus]}, "first_round_steps": 2},
        "eval": {"checkpoint": ckpt, "data": {"sources": [corpus]}},
        "export": {"checkpoint": ckpt},
        "ablate": {"scale": "smoke", "sources": [corpus]},
    }


def path_fields() -> list[tuple[str, tuple]]:
    return [(kind, f.loc) for kind, k in STAGES.items()
            for f in marked_fields(import_object(k.spec)) if f.marker.is_path]


def nested(loc: tuple, value) -> tuple[object, tuple]:
    """`value` wrapped to sit at `loc` (a list of one for EACH), and where it lands."""
    if not loc:
        return value, ()
    inner, where = nested(loc[1:], value)
    return ([inner], (0, *where)) if loc[0] == EACH else ({loc[0]: inner}, (loc[0], *where))


def with_value(config: dict, loc: tuple, value: str) -> tuple[dict, tuple]:
    """A copy of `config` holding `value` at the field `loc`, the rest unchanged; where it landed."""
    out = copy.deepcopy(config)
    node, where = out, ()
    for i, step in enumerate(loc):
        if i < len(loc) - 1 and loc[i + 1] != EACH and isinstance(node.get(step), dict):
            node, where = node[step], (*where, step)  # an existing section: keep its other fields
            continue
        node[step], rest = nested(loc[i + 1:], value)
        return out, (*where, step, *rest)
    raise AssertionError(loc)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fields")
    home, outside = data_home(tmp, "hello world\n" * 50)
    (home / "ckpt").mkdir()
    svc = Service(home, f"sqlite:///{tmp / 'tinyforge.db'}", TINYFORGE_STAGE_SPECS=PY_ENGINE)
    yield svc, home, outside
    svc.close()


def test_the_walk_finds_the_path_fields_a_name_list_missed():
    found = {(kind, ".".join(loc)) for kind, loc in path_fields()}
    for kind in ("train", "rounds"):
        for name in ("data.sources.*", "data.tokenizer", "data.cache_dir", "data.batch_ids", "data.window_ids",
                     "init.checkpoint", "init.hf_dir", "distill.teacher", "distill.id_map",
                     "parallel.deepspeed_config"):
            assert (kind, name) in found, (kind, name)
    assert {("rounds", "reference"), ("inherit", "parent"), ("inherit", "calib.sources.*"), ("inherit", "child.config"),
            ("inherit", "vocab.id_map"), ("eval", "checkpoint"), ("eval", "data.batch_ids"), ("export", "checkpoint"),
            ("tokenizer", "model"), ("tokenizer", "shards.*"), ("tokenizer", "counts"), ("ablate", "sources.*"),
            ("ablate", "cache_dir")} <= found
    assert {kind for kind, _ in found} == set(STAGES)  # every kind has path fields, and each is walked


def test_every_path_field_of_every_stage_kind_refuses_a_path_outside_the_roots(env):
    svc, home, outside = env
    bases = base_configs(home)
    assert set(bases) == set(STAGES), "a new stage kind needs a base config here"
    for kind, config in bases.items():  # the base configs pass: a 422 below is the one field's
        r = svc.http.post("/v1/jobs:plan", json={"name": "base", "stages": [{"kind": kind, "config": config}]})
        assert r.status_code == 200, (kind, r.text)
    before = svc.http.get("/v1/jobs").json()
    fields = path_fields()
    assert len(fields) >= 40, fields
    for kind, loc in fields:
        for bad in (str(outside / "secret.txt"), str(home / ".." / "outside" / "secret.txt")):
            config, where = with_value(bases[kind], loc, bad)
            r = svc.http.post("/v1/jobs", json={"name": "escape", "stages": [{"kind": kind, "config": config}]})
            assert r.status_code == 422, (kind, loc, r.status_code, r.text)
            at = ["body", "stages", 0, "config", *where]
            errors = {tuple(e["loc"]): e for e in r.json()["errors"]}
            assert tuple(at) in errors, (kind, loc, r.text)
            e = errors[tuple(at)]
            assert e["type"] == "path_error" and "outside the data roots" in e["msg"], (kind, loc, e)
            assert e["field"] == ".".join(map(str, at[1:])), e
    assert svc.http.get("/v1/jobs").json() == before  # nothing was stored


def _fifo_has_reader(path) -> bool:
    """Whether some process has the FIFO open for reading (opening its write end does not block then)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


def test_a_symlink_swapped_after_submission_fails_the_stage_before_it_starts(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "a.txt").write_text("hello world\n" * 200)
    outside.mkdir()
    # outside, the same name as a FIFO: a reader opening it would block, so the stage could not end
    os.mkfifo(outside / "a.txt")
    svc = Service(home, f"sqlite:///{tmp_path / 'tinyforge.db'}", TINYFORGE_STAGE_SPECS=PY_ENGINE,
                  TINYFORGE_ENGINE_COMMAND=f"{sys.executable} -m tinyforge.cli")
    try:
        job = svc.submit({"name": "swap", "stages": [{"kind": "train", "config": {
            "model": {"preset": "micro"}, "data": {"sources": [str(home / "corpus" / "a.txt")]}, "steps": 2}}]})
        stored = svc.job(job["id"])["stages"][0]["config"]["data"]["sources"]
        assert stored == [str((home / "corpus" / "a.txt").resolve())]  # checked and stored at submission
        # after submission, before any worker: the directory becomes a symlink leading out of the roots
        (home / "corpus").rename(home / "corpus.orig")
        (home / "corpus").symlink_to(outside)
        svc.worker()
        done = svc.wait(job["id"], timeout=120)
        st = done["stages"][0]
        assert done["status"] == "failed" and st["status"] == "failed", done
        reason = done["failure_reason"] or ""
        assert "config.data.sources.0" in reason and "outside the data roots" in reason, done
        assert str(outside / "a.txt") in reason, reason
        logs = svc.http.get(f"/v1/jobs/{job['id']}/logs").text
        assert "config.data.sources.0" in logs, logs[-2000:]
        assert not (home / "runs").exists() or not list((home / "runs").rglob("run.json"))  # the engine never ran
        time.sleep(0.5)
        assert not _fifo_has_reader(outside / "a.txt")  # and nothing holds the file outside open
    finally:
        svc.close()


def test_a_stage_kind_whose_schema_cannot_be_imported_fails_loudly(monkeypatch):
    """Validation never turns itself off: a registry entry that does not import is an error naming it."""
    import types

    from service.jobspec import validate_spec
    from service.planning import StageSchemaError, plan

    registry = types.ModuleType("broken_registry")
    registry.STAGE_SPECS = {"train": "no_such_module_here:TrainSpec", "eval": "engine.spec:NoSuchSpec"}
    monkeypatch.setitem(sys.modules, "broken_registry", registry)
    for kind, words in (("train", "cannot import 'no_such_module_here'"), ("eval", "has no attribute 'NoSuchSpec'"),
                        ("export", "has no schema in broken_registry:STAGE_SPECS")):
        with pytest.raises(StageSchemaError, match=words):
            plan(validate_spec({"name": "x", "stages": [{"kind": kind, "config": {}}]}),
                 registry="broken_registry:STAGE_SPECS", roots=(Path("/nonexistent"),))


def test_a_server_whose_registry_does_not_import_does_not_start(tmp_path):
    with pytest.raises(RuntimeError, match="serve did not start(.|\n)*cannot import 'no_such_registry_module'"):
        Service(tmp_path / "home", f"sqlite:///{tmp_path / 'tinyforge.db'}",
                TINYFORGE_STAGE_SPECS="no_such_registry_module:STAGE_SPECS")


def test_every_size_and_preset_field_of_every_stage_kind_is_checked(tmp_path):
    """The same walk for the other marks: 0 in any size field (model.overrides' shape fields included) and
    an unknown name in any preset field are refused, naming the field."""
    from service.body import SpecError
    from service.jobspec import validate_spec
    from service.planning import plan

    home = tmp_path / "home"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "a.txt").write_text("hello world\n" * 50)
    (home / "ckpt").mkdir()
    bases = base_configs(home)
    marked = [(kind, f.loc, f.marker.kind) for kind, k in STAGES.items()
              for f in marked_fields(import_object(k.spec)) if f.marker.kind in ("size", "preset")]
    assert {("train", "steps", "size"), ("train", "model.overrides.n_layer", "size"), ("train", "model.preset", "preset"),
            ("inherit", "child.n_layer", "size"), ("tokenizer", "sizes.*", "size"),
            ("tokenizer", "preset", "preset")} <= {(kind, ".".join(loc), m) for kind, loc, m in marked}
    for kind, loc, mark in marked:
        config, where = with_value(bases[kind], loc, 0 if mark == "size" else "no-such-preset")
        with pytest.raises(SpecError) as e:
            plan(validate_spec({"name": "x", "stages": [{"kind": kind, "config": config}]}),
                 registry=PY_ENGINE, roots=(home.resolve(),), cwd=home)
        at = ("body", "stages", 0, "config", *where)
        msgs = [err["msg"] for err in e.value.errors if tuple(err["loc"]) == at]
        assert len(msgs) == 1, (kind, loc, e.value.errors)  # named once, even where the schema refuses it too
        words = ("greater than 0", "must be positive") if mark == "size" else ("unknown preset 'no-such-preset'",)
        assert any(w in msgs[0] for w in words), (kind, loc, msgs)
