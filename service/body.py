"""Request bodies: parse a JSON or YAML body defensively (no aliases, no NaN, no NUL, no lone surrogates,
bounded nesting) and report every problem as {"loc": [...], "msg": ..., "type": ...} with the field's path
from the body root (for example body.stages.2.config.data.sources.0), so a client can show it next to the
field. The body size limit is enforced before this, while reading (service/api/middleware.py)."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """Validation failed; `errors` is a list of {"loc", "msg", "type"}."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def error(loc, msg, type_="value_error") -> dict:
    return {"loc": list(loc), "msg": msg, "type": type_}


def parse_body(body: bytes, content_type: str | None) -> Any:
    """JSON unless the content type says YAML."""
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if not body.strip():
        raise SpecError([error(("body",), "empty body; expected an object (a job spec, a token request)", "missing")])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([error(("body",), "body is not UTF-8 text", "encoding")]) from None
    if "yaml" in ctype:
        try:
            # aliases could expand a small body into a huge spec: a job spec never needs them
            if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise SpecError([error(("body",), "YAML aliases (*name) are not accepted", "yaml_invalid")])
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([error(("body",), f"invalid YAML: {exc}", "yaml_invalid")]) from None
        except RecursionError:
            raise SpecError([error(("body",), "YAML nested too deeply", "yaml_invalid")]) from None
        for loc, v in _leaves(data):
            if isinstance(v, float) and not math.isfinite(v):
                raise SpecError([error(("body",) + loc, "NaN and infinity are not accepted", "finite_number")])
            if not isinstance(v, (str, int, float, bool, type(None))):
                what = "a non-string key" if isinstance(v, _NonStringKey) else f"a {type(v).__name__}"
                raise SpecError([error(("body",) + loc, f"{what} is not a JSON value (quote it)", "json_type")])
        return _storable(data)
    try:
        return _storable(json.loads(text, parse_constant=_no_constant, parse_float=_finite_float))
    except _NonFinite as exc:
        raise SpecError([error(("body",), f"invalid JSON: {exc} is not accepted", "json_invalid")]) from None
    except json.JSONDecodeError as exc:
        raise SpecError([error(("body",), f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              "json_invalid")]) from None
    except RecursionError:
        raise SpecError([error(("body",), "JSON nested too deeply", "json_invalid")]) from None


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
        raise SpecError([error(("body",), "body nested too deeply", "json_invalid")]) from None
    if bad:
        raise SpecError([error(loc, msg, "string_unstorable") for loc, msg in bad[:20]])
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
    return [error(prefix + tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]


def parse_model(model: type[BaseModel], body: bytes):
    """A small JSON request body (not a job spec) into `model`; problems as SpecError, like a spec's."""
    data = parse_body(body, "application/json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc, ("body",))) from None


def request_hash(data: Any) -> str:
    """What Idempotency-Key compares: the parsed body, so key order and JSON vs YAML do not matter."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
