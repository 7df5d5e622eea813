"""The job spec: what `POST /v1/jobs` accepts (JSON or YAML), and its validation into runnable stages.

Every problem is reported as {"loc": [...], "msg": ...} with the field's path from the body root
(for example body.stages.2.config.data.sources.0), so a client can show it next to the field."""
from __future__ import annotations

import functools
import importlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from service import refs

StageKind = Literal["tokenizer", "inherit", "train", "rounds", "eval", "export", "ablate"]
KINDS: tuple[str, ...] = StageKind.__args__
# the engine command of each stage kind (tinyforge <command> --config FILE --out DIR)
STAGE_COMMANDS = {"export": "export-hf"}
NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class SpecError(ValueError):
    """Validation failed; `errors` is a list of {"loc", "msg", "type"}."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def _err(loc, msg, type_="value_error") -> dict:
    return {"loc": list(loc), "msg": msg, "type": type_}


def parse_duration(value):
    """Seconds from 90, 90.5, "90s", "30m", "2h", "1d", "1h30m"; None stays None."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        if value is not None and value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                             r"(?:(\d+(?:\.\d+)?)s?)?\s*", value)
        if parts and any(parts.groups()):
            d, h, m, s = (float(x) if x else 0.0 for x in parts.groups())
            total = d * 86400 + h * 3600 + m * 60 + s
            if total > 0:
                return total
    raise ValueError(f"expected seconds or a duration like '90s', '30m', '2h', '1h30m'; got {value!r}")


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmOptions(Strict):
    partition: str | None = None
    account: str | None = None
    extra_args: list[str] = Field(default_factory=list, description="further sbatch arguments")


class Resources(Strict):
    backend: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    devices_per_node: int = Field(1, ge=1, le=128, description="processes per node (devices, or CPU ranks)")
    nodes: int = Field(1, ge=1, le=4096)
    launcher: Literal["local", "slurm"] = "local"
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    max_restarts: int = Field(3, ge=0, le=100, description="automatic restarts after infra failures, "
                                                          "preemption or a lost worker")
    time_limit: Duration = Field(None, description="running time limit (seconds or '2h')")
    queue_time_limit: Duration = Field(None, description="fail instead of waiting longer than this")
    slurm: SlurmOptions | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.nodes > 1 and self.launcher == "local":
            raise ValueError("nodes: the local launcher runs on one node; use launcher: slurm for nodes > 1")
        return self


class StageSpec(Strict):
    name: str | None = Field(None, pattern=NAME, description="default: the kind")
    kind: StageKind
    config: dict[str, Any] = Field(default_factory=dict)


class ParentSpec(Strict):
    """The larger model the child inherits from: an existing checkpoint / HF directory, or one to train."""
    checkpoint: str | None = None
    hf_dir: str | None = None
    train: dict[str, Any] | None = Field(None, description="train config of a parent stage run first")

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.checkpoint, self.hf_dir, self.train)) != 1:
            raise ValueError("give exactly one of checkpoint, hf_dir, train")
        return self


class RecipeSpec(Strict):
    """The PanGu-pi Pro pipeline: compact tokenizer -> inherit -> round 1 -> round 2 -> export -> eval, and
    optionally a from-scratch control of the child's shape (scratch -> eval_scratch).
    Each section is that stage's config, merged over the wiring the expansion fills (service/recipe.py)."""
    data: dict[str, Any] = Field(default_factory=lambda: {"sources": ["data/sample"]},
                                 description="corpus settings shared by every stage that reads data")
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    parent: ParentSpec
    inherit: dict[str, Any] = Field(default_factory=dict)
    round1: dict[str, Any] = Field(default_factory=dict)
    round2: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    scratch: dict[str, Any] | None = Field(
        None, description="the control: a train config for the child's shape from a random init (give it round 1 "
                          "+ round 2's steps for equal training compute); adds stages scratch and eval_scratch, and "
                          "the job's comparison")


class Webhook(Strict):
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)


Label = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class JobSpec(Strict):
    name: str = Field(min_length=1, max_length=200)
    labels: dict[Label, Annotated[str, Field(max_length=200)]] = Field(default_factory=dict, max_length=50)
    stages: list[StageSpec] | None = Field(None, min_length=1, max_length=64)
    recipe: RecipeSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    webhook: Webhook | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.stages is None) == (self.recipe is None):
            raise ValueError("give either stages or recipe (not both)")
        return self


@dataclass
class PlannedStage:
    name: str
    kind: str
    config: dict  # validated and normalised; ${...} references unresolved
    loc: tuple  # where its config sits in the body, for error messages
    validated_by: str | None  # "module:Class" of the engine schema, None when the kind has none yet
    references: list[str] = field(default_factory=list)


@dataclass
class Plan:
    spec: JobSpec
    stages: list[PlannedStage]


# ---------------------------------------------------------------- parsing


def parse_body(body: bytes, content_type: str | None) -> Any:
    """JSON unless the content type says YAML."""
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if not body.strip():
        raise SpecError([_err(("body",), "empty body; expected an object (a job spec, a token request)", "missing")])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([_err(("body",), "body is not UTF-8 text", "encoding")]) from None
    if "yaml" in ctype:
        try:
            # aliases could expand a small body into a huge spec: a job spec never needs them
            if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise SpecError([_err(("body",), "YAML aliases (*name) are not accepted", "yaml_invalid")])
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([_err(("body",), f"invalid YAML: {exc}", "yaml_invalid")]) from None
        except RecursionError:
            raise SpecError([_err(("body",), "YAML nested too deeply", "yaml_invalid")]) from None
        for loc, v in _leaves(data):
            if isinstance(v, float) and not math.isfinite(v):
                raise SpecError([_err(("body",) + loc, "NaN and infinity are not accepted", "finite_number")])
            if not isinstance(v, (str, int, float, bool, type(None))):
                what = "a non-string key" if isinstance(v, _NonStringKey) else f"a {type(v).__name__}"
                raise SpecError([_err(("body",) + loc, f"{what} is not a JSON value (quote it)", "json_type")])
        return _storable(data)
    try:
        return _storable(json.loads(text, parse_constant=_no_constant, parse_float=_finite_float))
    except _NonFinite as exc:
        raise SpecError([_err(("body",), f"invalid JSON: {exc} is not accepted", "json_invalid")]) from None
    except json.JSONDecodeError as exc:
        raise SpecError([_err(("body",), f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              "json_invalid")]) from None
    except RecursionError:
        raise SpecError([_err(("body",), "JSON nested too deeply", "json_invalid")]) from None


class _NonFinite(ValueError):
    pass


def _storable(data):
    """Refuse, naming where, text a database cannot store: a NUL character (PostgreSQL text cannot hold
    one) or a lone surrogate such as JSON's "\\ud800" (not encodable as UTF-8)."""
    def problem(text: str) -> str | None:
        if "\x00" in text:
            return "NUL characters are not accepted"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode text (a lone surrogate)"
        return None

    def find(value, loc):
        if isinstance(value, str):
            if (msg := problem(value)) is not None:
                yield loc, msg
        elif isinstance(value, dict):
            for k, v in value.items():
                key = str(k).encode("utf-8", "backslashreplace").decode()  # a loc must be answerable too
                if isinstance(k, str) and (msg := problem(k)) is not None:
                    yield loc + (key,), msg
                yield from find(v, loc + (key,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from find(v, loc + (i,))
    try:
        bad = list(find(data, ("body",)))
    except RecursionError:
        raise SpecError([_err(("body",), "body nested too deeply", "json_invalid")]) from None
    if bad:
        raise SpecError([_err(loc, msg, "string_unstorable") for loc, msg in bad[:20]])
    return data


def _no_constant(name: str):
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 overflows to infinity, which no JSON answer can carry back
        raise _NonFinite(text if len(text) <= 40 else text[:40] + "...")
    return value


class _NonStringKey:
    """Stands for a mapping key that is not a string (YAML allows `1: x`, JSON does not)."""


def _leaves(value, loc=()):
    """(loc, value) of every non-container in parsed YAML; a non-string key counts as a leaf too."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                yield loc + (str(k),), _NonStringKey()
            yield from _leaves(v, loc + (str(k),))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, loc + (i,))
    else:
        yield loc, value


def pydantic_errors(exc: ValidationError, prefix: tuple) -> list[dict]:
    return [_err(prefix + tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]


def parse_model(model: type[BaseModel], body: bytes):
    """A small JSON request body (not a job spec) into `model`; problems as SpecError, like a spec's."""
    data = parse_body(body, "application/json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc, ("body",))) from None


def validate_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([_err(("body",), "expected a mapping (a job spec object)", "dict_type")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc, ("body",))) from None


# ---------------------------------------------------------------- stage schemas


_registries: dict[str, dict] = {}


def stage_schema(registry: str, kind: str):
    """The engine's pydantic class for a stage kind, or None while the engine has none for it."""
    if registry not in _registries:
        module, attr = registry.split(":")
        try:
            _registries[registry] = dict(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            _registries[registry] = {}
    path = _registries[registry].get(kind)
    if not path:
        return None, None
    module, attr = path.split(":")
    try:
        return getattr(importlib.import_module(module), attr), path
    except (ImportError, AttributeError):
        return None, None


# ---------------------------------------------------------------- paths and sizes

# config keys whose string values are file system paths (checked against the data roots)
PATH_KEYS = {"sources", "source", "tokenizer", "checkpoint", "hf_dir", "parent", "corpus", "calib", "cache_dir",
             "path", "paths", "id_map", "data_dir", "reference", "large_tokenizer", "model", "counts", "shards",
             "config"}
PATH_SUFFIXES = ("_dir", "_path", "_file", "_checkpoint")
NOT_PATHS = {"byte"}  # tokenizer: byte is the built-in byte-level tokenizer
OUTPUT_KEYS = {"cache_dir"}  # may not exist yet
SIZE_KEYS = {"steps", "vocab", "vocab_size", "micro_batch", "batch_size", "grad_accum", "seq_len", "n_layer",
             "n_embd", "n_head", "n_kv_head", "ffn_hidden", "block_size", "batches", "calib_batches"}


def _is_path_key(key) -> bool:
    return isinstance(key, str) and (key in PATH_KEYS or key.endswith(PATH_SUFFIXES))


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
def _presets() -> frozenset[str] | None:
    try:
        from engine.config import preset_names  # a registry of names, no torch import
    except ImportError:
        return None
    return frozenset(preset_names())


def check_values(config: Any, loc: tuple, roots, cwd: Path, errors: list, key=None, path_key=None):
    """Walk a config: make paths absolute (inside the roots), refuse non-positive sizes and unknown
    presets. Returns the config with paths rewritten."""
    if isinstance(config, dict):
        return {k: check_values(v, loc + (k,), roots, cwd, errors, k, k if _is_path_key(k) else None)
                for k, v in config.items()}
    if isinstance(config, list):
        return [check_values(v, loc + (i,), roots, cwd, errors, key, path_key) for i, v in enumerate(config)]
    if isinstance(config, str) and path_key and config not in NOT_PATHS and not refs.is_ref(config):
        try:
            return check_path(config, roots, path_key not in OUTPUT_KEYS, cwd)
        except ValueError as exc:
            errors.append(_err(loc, str(exc), "path_error"))
            return config
    if isinstance(config, str) and isinstance(key, str) and (key == "preset" or key.endswith("_preset")):
        known = _presets()
        if known is not None and config not in known:
            errors.append(_err(loc, f"unknown preset {config!r}; known: {', '.join(sorted(known))}", "preset"))
    if key in SIZE_KEYS and isinstance(config, (int, float)) and not isinstance(config, bool) and config <= 0:
        errors.append(_err(loc, f"must be positive, got {config}", "greater_than"))
    return config


# ---------------------------------------------------------------- planning


def plan(spec: JobSpec, *, registry: str, roots: tuple[Path, ...], cwd: Path | None = None) -> Plan:
    """Expand the recipe, validate each stage's config with the engine's schema, check references,
    paths and sizes. Raises SpecError listing every problem found."""
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
    for i, (name, kind, config, loc) in enumerate(raw):
        if name in seen:
            errors.append(_err(loc[:-1] + ("name",), f"stage name {name!r} is used twice; give each stage a "
                                                       "unique name", "unique"))
        references = []
        try:
            for ref_loc, ref in refs.find(config):
                if ref.stage not in seen:
                    errors.append(_err(loc + ref_loc, f"${{{ref.text}}} must name an earlier stage; earlier: "
                                                      f"{', '.join(sorted(seen)) or '(none)'}", "reference"))
                references.append(ref.text)
        except refs.RefError as exc:
            errors.append(_err(loc + exc.loc, exc.msg, "reference"))
        seen.add(name)
        cls, cls_path = stage_schema(registry, kind)
        if cls is not None:
            if spec.resources.backend != "auto" and "backend" in cls.model_fields and "backend" not in config:
                config = {**config, "backend": spec.resources.backend}
            try:
                config = cls.model_validate(config).model_dump(mode="json")
            except ValidationError as exc:
                schema_errors = pydantic_errors(exc, loc)
                errors.extend(schema_errors)
                more: list[dict] = []  # still report paths and presets, once per field
                check_values(config, loc, roots, cwd, more)
                known = {tuple(e["loc"]) for e in schema_errors}
                errors.extend(e for e in more if tuple(e["loc"]) not in known)
                continue
        config = check_values(config, loc, roots, cwd, errors)
        stages.append(PlannedStage(name, kind, config, loc, cls_path, references))
    if errors:
        raise SpecError(errors)
    return Plan(spec, stages)


def request_hash(data: Any) -> str:
    """What Idempotency-Key compares: the parsed body, so key order and JSON vs YAML do not matter."""
    import hashlib
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
