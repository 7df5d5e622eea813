"""`${stages.NAME.…}` references: how a stage's config points at what an earlier stage produced.

    ${stages.tokenizer.artifacts.tokenizer}   path of the artifact named `tokenizer`, or else of the
                                              last artifact of type `tokenizer` (result.json order)
    ${stages.round1.run_dir}                  the stage's run directory
    ${stages.round1.summary.val_loss}         a value of the stage's result.json summary

A string that is exactly one reference becomes the referenced value (any JSON type); a reference
inside a longer string is formatted into it. The service checks at submit time that every
reference names an earlier stage, and resolves them just before the stage starts."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

REF = re.compile(r"\$\{([^}]*)\}")
_FORM = re.compile(r"^stages\.([A-Za-z0-9_-]+)\.(?:(run_dir)|artifacts\.([A-Za-z0-9_.-]+)|summary\.([A-Za-z0-9_.-]+))$")


@dataclass(frozen=True)
class Ref:
    text: str  # the inside of ${...}
    stage: str
    what: str  # run_dir | artifacts | summary
    key: str | None


class RefError(ValueError):
    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def parse(text: str) -> Ref:
    m = _FORM.match(text.strip())
    if not m:
        raise ValueError(f"${{{text}}} is not a reference; expected ${{stages.NAME.artifacts.KEY}}, "
                         f"${{stages.NAME.run_dir}} or ${{stages.NAME.summary.KEY}}")
    stage, run_dir, artifact, summary = m.groups()
    if run_dir:
        return Ref(text, stage, "run_dir", None)
    return Ref(text, stage, "artifacts" if artifact else "summary", artifact or summary)


def walk(value: Any, loc: tuple = ()):
    """Yield (loc, string) for every string in a JSON-like value."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, loc + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, loc + (i,))


def find(config: dict) -> list[tuple[tuple, Ref]]:
    """Every reference in a config, with its location; RefError for malformed ones."""
    out = []
    for loc, s in walk(config):
        for m in REF.finditer(s):
            try:
                out.append((loc, parse(m.group(1))))
            except ValueError as exc:
                raise RefError(loc, str(exc)) from None
    return out


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def substitute(value: Any, lookup: Callable[[Ref], Any]) -> Any:
    """Replace every reference in a JSON-like value using lookup(ref)."""
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF.fullmatch(value)
    if whole:
        return lookup(parse(whole.group(1)))
    return REF.sub(lambda m: str(lookup(parse(m.group(1)))), value)
