"""Planning a job: expand its recipe, validate each stage's config with the engine's schema for its kind,
check references, and check every field the schema marks (engine/fields.py): paths resolve inside the
data roots (inputs exist), sizes are positive, presets are known. No list of key names: a field is a path
because its schema says so, so a field added to a schema is checked without a change here.

The worker runs the same path check again on the resolved config just before a stage starts
(`recheck_paths`): a symlink swapped after submission must not lead a stage out of the roots."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.fields import Marker, marked_fields, values_at
from engine.importing import import_object
from service import refs
from service.body import SpecError, error, pydantic_errors
from service.jobspec import KINDS, JobSpec


class StageSchemaError(RuntimeError):
    """The stage schema registry (TINYFORGE_STAGE_SPECS) does not give a loadable schema for a kind: a
    broken install or setting. Never skipped: validating without the schema would let any path through."""


@dataclass
class PlannedStage:
    name: str
    kind: str
    config: dict  # validated and normalised; ${...} references unresolved
    loc: tuple  # where its config sits in the body, for error messages
    validated_by: str  # "module:Class" of the engine schema
    references: list[str] = field(default_factory=list)


@dataclass
class Plan:
    spec: JobSpec
    stages: list[PlannedStage]


# ---------------------------------------------------------------- stage schemas


@functools.lru_cache(maxsize=8)
def _registry(registry: str) -> dict[str, str]:
    try:
        return dict(import_object(registry, "TINYFORGE_STAGE_SPECS (the stage schema registry)"))
    except (ImportError, ValueError, TypeError) as exc:
        raise StageSchemaError(str(exc)) from exc


@functools.lru_cache(maxsize=64)
def stage_schema(registry: str, kind: str) -> tuple[type[BaseModel], str]:
    """The engine's pydantic class for a stage kind and its "module:Class"; StageSchemaError if there is none."""
    specs = _registry(registry)
    if kind not in specs:
        raise StageSchemaError(f"stage kind {kind!r} has no schema in {registry} (it has: {', '.join(specs)})")
    try:
        cls = import_object(specs[kind], f"stage kind {kind!r}: schema")
    except (ImportError, ValueError) as exc:
        raise StageSchemaError(str(exc)) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise StageSchemaError(f"stage kind {kind!r}: {specs[kind]} is not a pydantic model")
    return cls, specs[kind]


def stage_schemas(registry: str) -> dict[str, type[BaseModel]]:
    """Every accepted kind's schema, loaded now: the server calls this as it starts, so a broken registry
    stops it there instead of at the first submission."""
    return {kind: stage_schema(registry, kind)[0] for kind in KINDS}


# ---------------------------------------------------------------- marked fields: paths, sizes, presets


def check_path(value: str, roots: tuple[Path, ...], must_exist: bool, cwd: Path) -> str:
    shown = repr(value if len(value) <= 300 else value[:300] + "...")
    try:
        p = Path(value).expanduser()
        p = (p if p.is_absolute() else cwd / p).resolve()  # resolves symlinks and ..
        inside = any(p == r or p.is_relative_to(r) for r in roots)
        missing = inside and must_exist and not p.exists()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long, a NUL byte, ~nobody
        raise ValueError(f"{shown} is not a usable path: {exc}") from None
    if not inside:
        raise ValueError(f"{shown} resolves to {p}, outside the data roots "
                         f"({':'.join(map(str, roots))}; set TINYFORGE_DATA_ROOTS)")
    if missing:
        raise ValueError(f"{shown}: {p} does not exist")
    return str(p)


@functools.lru_cache(maxsize=1)
def _presets() -> frozenset[str]:
    from engine.config import preset_names  # a registry of names, no torch import
    return frozenset(preset_names())


def _check_value(marker: Marker, value: Any, roots, cwd: Path) -> tuple[Any, dict | None]:
    """(the value, paths made absolute; the problem as (msg, type) or None)."""
    if marker.is_path:
        if not isinstance(value, str) or value in marker.names or refs.is_ref(value):
            return value, None  # a wrong type is the schema's to report; a reference is checked once resolved
        try:
            return check_path(value, roots, marker.kind == "input_path", cwd), None
        except ValueError as exc:
            return value, (str(exc), "path_error")
    if marker.kind == "size":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            return value, (f"must be positive, got {value}", "greater_than")
    elif marker.kind == "preset":
        if isinstance(value, str) and value not in _presets():
            return value, (f"unknown preset {value!r}; known: {', '.join(sorted(_presets()))}", "preset")
    return value, None


def check_fields(schema: type[BaseModel], config: dict, loc: tuple, roots: tuple[Path, ...], cwd: Path,
                 errors: list, kinds: tuple[str, ...] = ("input_path", "output_path", "size", "preset")) -> dict:
    """Check each value `config` holds at a field `schema` marks (of `kinds`); append problems to `errors`
    located from `loc`. Returns a copy of the config with paths made absolute (symlinks resolved)."""
    out = _copy(config)
    for f in marked_fields(schema):
        if f.marker.kind not in kinds:
            continue
        for where, value in list(values_at(out, f)):
            new, problem = _check_value(f.marker, value, roots, cwd)
            if problem:
                errors.append(error(loc + where, *problem))
            elif new is not value:
                _set(out, where, new)
    return out


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _set(config, where: tuple, value) -> None:
    node = config
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value


class PathRecheckError(ValueError):
    """A path of a stage's resolved config no longer passes (a symlink swapped since submission, an
    earlier stage's output gone); `msg` names the field."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def recheck_paths(registry: str, kind: str, config: dict, roots: tuple[Path, ...], cwd: Path | None = None) -> None:
    """The worker's check of a stage's resolved config (references substituted) just before it starts.
    Raises PathRecheckError naming the first field that fails, or the missing schema."""
    try:
        schema, _ = stage_schema(registry, kind)
    except StageSchemaError as exc:
        raise PathRecheckError(f"cannot check the config's paths: {exc}") from None
    errors: list[dict] = []
    check_fields(schema, config, ("config",), roots, cwd or Path.cwd(), errors, kinds=("input_path", "output_path"))
    if errors:
        raise PathRecheckError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


# ---------------------------------------------------------------- planning


def plan(spec: JobSpec, *, registry: str, roots: tuple[Path, ...], cwd: Path | None = None) -> Plan:
    """Expand the recipe, validate each stage's config with the engine's schema, check references,
    paths, sizes and presets. Raises SpecError listing every problem found, StageSchemaError when a kind
    has no loadable schema."""
    from service.recipe import expand  # the recipe's wiring lives in one module

    cwd = cwd or Path.cwd()
    errors: list[dict] = []
    if spec.recipe is not None:
        raw = expand(spec.recipe, spec.resources)
    else:
        raw = [(s.name or s.kind, s.kind, s.config, ("body", "stages", i, "config"))
               for i, s in enumerate(spec.stages)]
    seen: set[str] = set()
    stages = []
    for name, kind, config, loc in raw:
        if name in seen:
            errors.append(error(loc[:-1] + ("name",), f"stage name {name!r} is used twice; give each stage a "
                                                        "unique name", "unique"))
        references = []
        try:
            for ref_loc, ref in refs.find(config):
                if ref.stage not in seen:
                    errors.append(error(loc + ref_loc, f"${{{ref.text}}} must name an earlier stage; earlier: "
                                                       f"{', '.join(sorted(seen)) or '(none)'}", "reference"))
                references.append(ref.text)
        except refs.RefError as exc:
            errors.append(error(loc + exc.loc, exc.msg, "reference"))
        seen.add(name)
        cls, cls_path = stage_schema(registry, kind)
        if spec.resources.backend != "auto" and "backend" in cls.model_fields and "backend" not in config:
            config = {**config, "backend": spec.resources.backend}
        # the submitted values first: the schema's own validators may read the files a config names (a
        # checkpoint's manifest), which they must not do for a path outside the roots
        submitted: list[dict] = []
        check_fields(cls, config, loc, roots, cwd, submitted)
        if any(e["type"] == "path_error" for e in submitted):
            errors.extend(submitted)
            continue
        try:
            validated = cls.model_validate(config).model_dump(mode="json")
        except ValidationError as exc:
            schema_errors = pydantic_errors(exc, loc)
            known = {tuple(e["loc"]) for e in schema_errors}
            errors.extend(schema_errors)
            errors.extend(e for e in submitted if tuple(e["loc"]) not in known)  # once per field
            continue
        # then the validated config: defaults filled in are checked too, and paths are stored resolved
        config = check_fields(cls, validated, loc, roots, cwd, errors)
        stages.append(PlannedStage(name, kind, config, loc, cls_path, references))
    if errors:
        raise SpecError(errors)
    return Plan(spec, stages)
