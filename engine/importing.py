"""Load an object named by a "module:attr" string: the one loader behind every lazy registry
(stage kinds, CLI commands, launchers, operator tables). Torch-free, so registries stay cheap to read.

A module that fails to import is an error, never a silently missing entry: a broken stage command must
show up as its ImportError, not as a command that vanished from `tinyforge --help`."""
from __future__ import annotations

import importlib


class ImportPathError(ImportError):
    """A "module:attr" path that does not resolve; the message names the path and the cause."""


def import_object(path: str, what: str = "object"):
    """The attribute `attr` of module `module` for path "module:attr". `what` names the entry in the error
    (e.g. "stage command 'train'")."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what}: {path!r} is not a 'module:attr' path")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ImportPathError(f"{what}: cannot import {module!r} (from {path!r}): {exc}") from exc
    try:
        return getattr(loaded, attr)
    except AttributeError:
        raise ImportPathError(f"{what}: module {module!r} has no attribute {attr!r} (from {path!r})") from None
