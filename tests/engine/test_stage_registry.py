"""The stage registry (engine/stages.py) is the single source of the stage kinds: the engine's schemas,
the `tinyforge` command, the worker's process count and the recipe's wiring all read it, reading it
imports no torch, and a module that fails to import is an error, never a silently missing entry."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from engine.importing import ImportPathError, import_object
from engine.stages import BACKENDS, STAGE_SPECS, STAGES
from tests.conftest import REPO, run_cli

COMMAND_MODULES = sorted((REPO / "engine" / "commands").glob("*.py"))


def test_reading_the_registry_imports_no_torch():
    code = ("import sys, engine.stages, engine.importing, tinyforge.cli; "
            "print(sorted(m for m in ('torch', 'numpy', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", list(STAGES))
def test_every_kind_has_a_schema_and_a_command_that_load(name):
    kind = STAGES[name]
    assert kind.name == name
    schema = kind.load_spec()
    assert issubclass(schema, BaseModel) and STAGE_SPECS[name] == kind.spec
    command = kind.load_command()
    assert isinstance(command, click.Command)
    options = {opt for p in command.params for opt in p.opts}
    assert {"--config", "--out"} <= options, f"{name}: the worker runs `{kind.command} --config F --out D`"
    if "backend" in schema.model_fields:
        assert schema.model_fields["backend"].annotation.__args__ == BACKENDS


def test_tinyforge_help_lists_every_kind_and_the_engine_schemas_are_the_registry():
    from engine.spec import STAGE_SPECS as engine_specs
    from engine.spec import stage_spec_class
    from tinyforge.cli import COMMANDS

    proc = run_cli("--help", check=True)
    listed = set(re.findall(r"^  (\S+)\s", proc.stdout, re.M))
    for kind in STAGES.values():
        assert kind.command in listed, (kind.command, proc.stdout)
        assert COMMANDS[kind.command] == kind.entry
        assert stage_spec_class(kind.name) is kind.load_spec()
    assert engine_specs == STAGE_SPECS


def _click_commands(path: Path) -> list[str]:
    """The top-level click commands a module defines, read from its source (so that a module nobody
    registered is still seen)."""
    return [node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)
            and any(ast.unparse(d).startswith(("click.command", "click.group")) for d in node.decorator_list)]


def test_every_stage_form_command_is_a_registered_kind():
    """No stray kinds: an engine command taking --config and --out (the form the worker launches) is some
    kind's entry in the registry, and the other commands (tools: arch, generate, import-hf, demo) are not."""
    entries = {kind.entry for kind in STAGES.values()}
    stage_forms = set()
    for path in COMMAND_MODULES:
        for name in _click_commands(path):
            entry = f"engine.commands.{path.stem}:{name}"
            command = import_object(entry)
            options = {opt for p in command.params for opt in p.opts}
            if {"--config", "--out"} <= options:
                stage_forms.add(entry)
    assert stage_forms == entries


def test_the_worker_runs_distributed_kinds_on_every_device_and_others_on_one():
    from service.worker.runner import AttemptRunner

    job = SimpleNamespace(devices_per_node=4)
    for kind in STAGES.values():
        assert AttemptRunner._processes(job, SimpleNamespace(kind=kind.name)) == (4 if kind.distributed else 1)
    assert {k.name for k in STAGES.values() if k.distributed} == {"train", "rounds", "inherit"}
    assert AttemptRunner._processes(job, SimpleNamespace(kind="not-a-kind")) == 1


@pytest.mark.parametrize("example", ["recipe.yaml", "demo-recipe.yaml"])
def test_the_recipe_references_only_what_the_referenced_kind_records(example):
    from service import refs
    from service.recipe import expand
    from service.jobspec import validate_spec

    spec = validate_spec(yaml.safe_load((REPO / "examples" / example).read_text()))
    stages = expand(spec.recipe, spec.resources)
    kinds = {name: kind for name, kind, _, _ in stages}
    assert set(kinds.values()) <= set(STAGES)
    seen = 0
    for _, _, config, _ in stages:
        for _, ref in refs.find(config):
            part, artifact = ref.text.split(".")[2:4]
            assert part == "artifacts" and artifact in STAGES[kinds[ref.stage]].artifacts, ref.text
            seen += 1
    assert seen >= 8


def test_recipe_wiring_refuses_an_artifact_its_kind_does_not_record():
    from service.recipe import output

    assert output("round1", "checkpoint") == "${stages.round1.artifacts.checkpoint}"
    with pytest.raises(ValueError, match="a eval stage records no artifact 'checkpoint'"):
        output("eval", "checkpoint")


def test_a_train_stage_records_what_the_registry_says(trained_run):
    """The registry's artifacts and summary keys are what the stage writes (a micro run of the real trainer)."""
    _, result = trained_run
    kind = STAGES["train"]
    assert result["kind"] == kind.name
    assert {a["name"] for a in result["artifacts"]} <= set(kind.artifacts)
    assert "checkpoint" in {a["name"] for a in result["artifacts"]}
    assert set(kind.summary) <= set(result["summary"]), set(kind.summary) - set(result["summary"])


# ---------------------------------------------------------------- failing loudly


def test_import_object_names_the_path_and_the_cause(tmp_path, monkeypatch):
    (tmp_path / "broken_stage_module.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportPathError, match=r"stage command: cannot import 'broken_stage_module' .*"
                                              r"no_such_dependency_xyz"):
        import_object("broken_stage_module:cmd", "stage command")
    with pytest.raises(ImportPathError, match="module 'engine.stages' has no attribute 'NOPE'"):
        import_object("engine.stages:NOPE")
    with pytest.raises(ValueError, match="not a 'module:attr' path"):
        import_object("engine.stages.STAGES")
    assert import_object("engine.stages:STAGES") is STAGES


@pytest.mark.parametrize("module_text", ["import no_such_dependency_xyz\n", None], ids=["broken", "deleted"])
def test_cli_shows_a_broken_or_missing_command_module_as_an_error(tmp_path, monkeypatch, module_text):
    """Before: a command whose module was missing vanished from --help and `tinyforge <it>` said 'No such command'."""
    from tinyforge import cli

    if module_text is not None:
        (tmp_path / "broken_cli_module.py").write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "broken", "broken_cli_module:broken")
    runner = CliRunner()
    for args in (["broken", "--help"], ["--help"]):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 1, (args, result.output)
        assert "command 'broken': cannot import 'broken_cli_module'" in result.output, result.output
        assert "No such command" not in result.output


def test_a_broken_launcher_module_raises_instead_of_vanishing(tmp_path, monkeypatch):
    from service.worker import launchers

    (tmp_path / "broken_launcher_module.py").write_text("raise ImportError('needs the cluster client')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(launchers.LAUNCHERS, "broken", "broken_launcher_module:Launcher")
    monkeypatch.setitem(launchers.LAUNCHERS, "misnamed", "service.worker.launchers:NoSuchLauncher")
    with pytest.raises(ImportPathError, match="launcher 'broken': cannot import .*needs the cluster client"):
        launchers.load_launcher("broken")
    with pytest.raises(ImportPathError, match="launcher 'misnamed': module 'service.worker.launchers' has no "
                                              "attribute 'NoSuchLauncher'"):
        launchers.load_launcher("misnamed")
    assert launchers.load_launcher("local") is launchers.LocalLauncher
    assert launchers.load_launcher("not-registered") is None


# ---------------------------------------------------------------- one memory-fit check


def test_validation_and_training_start_refuse_with_the_same_check(tmp_path):
    """The plan-time check (engine/spec.py) and the start-time check (engine/train.py, against the device's free
    memory) are one function: with the same limit they refuse with the same words."""
    from engine.spec import SpecError, parse
    from engine.train import train

    config = {"model": {"preset": "micro"}, "data": {"sources": [str(REPO / "data" / "sample")]}, "steps": 12,
              "batch_size": 64, "micro_batch": 64, "precision": "fp32", "backend": "cpu"}
    small = 10 / 1024  # GiB: the micro model's weights fit, 64 sequences of activations do not
    with pytest.raises(SpecError) as at_validation:
        parse("train", {**config, "memory_limit_gb": small})
    spec = parse("train", config)
    spec.memory_limit_gb = small  # as if the device had less free memory than the plan assumed
    with pytest.raises(MemoryError) as at_start:
        train(spec, tmp_path / "run", show_progress=False, log=lambda *a: None)
    assert str(at_start.value).startswith("micro_batch: training memory estimate ")
    assert "exceeds the limit 10.0 MiB (memory_limit_gb)" in str(at_start.value)
    assert str(at_start.value) == str(at_validation.value)
