"""What a stage config's fields mean outside the engine: file-system paths (read, or written) and sizes.

A schema says it on the field itself, so nothing else keeps a list of names that can drift:

    checkpoint: InputPath                  # must exist
    cache_dir: OutputPath | None = None    # may not exist yet
    sources: list[InputPath]
    steps: Size = 200                      # a count that must be positive
    preset: Preset = "tiny"                # a name from engine.config's presets

`marked_fields(Schema)` walks a pydantic schema (nested models, lists, Optional/Union) and returns every
marked field with its location; the service checks job configs with it (service/planning.py). Torch-free.
The markers also show in `model_json_schema()` as "x-tinyforge": "input_path" | "output_path" | "size" |
"preset", so an API client can see them."""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, PositiveInt

Kind = Literal["input_path", "output_path", "size", "preset"]
EACH = "*"  # a location step standing for every item of a list (or every value of a mapping)


@dataclass(frozen=True)
class Marker:
    kind: Kind
    names: tuple[str, ...] = ()  # values that are built-in names, not paths (a tokenizer's "byte")
    keys: tuple[str, ...] = ()  # on a mapping: the marker applies to the values of these keys

    @property
    def is_path(self) -> bool:
        return self.kind in ("input_path", "output_path")

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        schema["x-tinyforge"] = self.kind
        if self.keys:
            schema["x-tinyforge-keys"] = list(self.keys)
        return schema


InputPath = Annotated[str, Marker("input_path")]
OutputPath = Annotated[str, Marker("output_path")]
TokenizerPath = Annotated[str, Marker("input_path", names=("byte",))]  # "byte": the built-in byte tokenizer
Size = Annotated[PositiveInt, Marker("size")]
Preset = Annotated[str, Marker("preset")]


def sizes_at(*keys: str) -> Marker:
    """For a mapping whose values under `keys` are sizes (a model's overrides: {"n_layer": 4, "rope_theta": ...})."""
    return Marker("size", keys=keys)


@dataclass(frozen=True)
class MarkedField:
    loc: tuple[str, ...]  # field names from the schema's root; EACH for every item of a list
    marker: Marker

    @property
    def dotted(self) -> str:
        return ".".join(self.loc)


def marked_fields(schema: type[BaseModel]) -> list[MarkedField]:
    """Every marked field of `schema`, nested models included, in declaration order."""
    out: list[MarkedField] = []
    _walk_model(schema, (), out, ())
    return out


def _walk_model(model: type[BaseModel], loc: tuple, out: list, seen: tuple) -> None:
    if model in seen:  # a recursive schema: its fields are listed once, at the outer level
        return
    for name, info in model.model_fields.items():
        _walk_type(info.annotation, tuple(info.metadata), loc + (name,), out, seen + (model,))


def _walk_type(tp: Any, metadata: tuple, loc: tuple, out: list, seen: tuple) -> None:
    while typing.get_origin(tp) is Annotated:  # Annotated[X, m1, m2]: X plus its metadata
        tp, *extra = typing.get_args(tp)
        metadata = metadata + tuple(extra)
    marker = next((m for m in metadata if isinstance(m, Marker)), None)
    if marker is not None and marker.keys:  # a mapping: each named key is a field of its own
        out.extend(MarkedField(loc + (key,), marker) for key in marker.keys)
        return
    if marker is not None:
        out.append(MarkedField(loc, marker))
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        found: list[MarkedField] = []
        for arg in args:
            _walk_type(arg, (), loc, found, seen)
        out.extend(f for i, f in enumerate(found) if f not in found[:i])  # list[X] | X: one entry per loc
    elif origin in (list, tuple, set, frozenset):
        for arg in args:
            if arg is not Ellipsis:
                _walk_type(arg, (), loc + (EACH,), out, seen)
    elif origin is dict and len(args) == 2:
        _walk_type(args[1], (), loc + (EACH,), out, seen)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        _walk_model(tp, loc, out, seen)


def values_at(config: Any, field: MarkedField, loc: tuple = ()):
    """(location, value) of each value a config holds at a marked field's location (none when absent)."""
    def walk(node, steps, where):
        if not steps:
            yield where, node
        elif steps[0] == EACH:
            if isinstance(node, list):
                for i, item in enumerate(node):
                    yield from walk(item, steps[1:], where + (i,))
            elif isinstance(node, dict):
                for k, item in node.items():
                    yield from walk(item, steps[1:], where + (k,))
        elif isinstance(node, dict) and steps[0] in node:
            yield from walk(node[steps[0]], steps[1:], where + (steps[0],))
    yield from walk(config, field.loc, loc)
