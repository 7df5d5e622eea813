"""A compact tokenizer's id map -> the parent token ids in child-id order (the embedding and output
rows the child keeps).

Accepted: a JSON list or .npy array of parent ids in child-id order; a JSON object {parent id: child
id} (optionally under "old_to_new"), or {"new_to_old": [...]}; a list/array of parent-vocab length
holding each parent id's child id, -1 for dropped tokens (recognised by its negative entries) -- what
engine/tokenizer/compact.py writes as MODEL.id_map.json ({"old_to_new": [...]}) and MODEL.id_map.npy, found
automatically beside the child's tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _from_old_to_new(pairs: dict[int, int]) -> list[int]:
    kept = {o: n for o, n in pairs.items() if n >= 0}
    new_ids = sorted(kept.values())
    if new_ids != list(range(len(new_ids))):
        raise ValueError("vocab.id_map: child ids must be 0..n-1, each once")
    out = [0] * len(new_ids)
    for old, new in kept.items():
        out[new] = old
    return out


def beside(tokenizer: str | Path) -> Path | None:
    """The id map the compact-tokenizer stage writes next to its model (MODEL.id_map.json / .npy)."""
    t = Path(tokenizer)
    stem = t.with_suffix("") if t.suffix == ".model" else t
    for suffix in (".id_map.json", ".id_map.npy"):
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def load_id_map(path: str | Path, parent_vocab: int) -> list[int]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vocab.id_map: {p} does not exist")
    if p.suffix == ".npy":
        data = np.load(p, allow_pickle=False).tolist()
    else:
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"vocab.id_map: {p} is not valid JSON ({exc})")
    if isinstance(data, dict) and len(data) == 1 and set(data) <= {"old_to_new", "new_to_old"}:
        key, data = next(iter(data.items()))
        if key == "old_to_new" and isinstance(data, list):
            data = {i: n for i, n in enumerate(data)}
    try:
        if isinstance(data, dict):
            ids = _from_old_to_new({int(k): int(v) for k, v in data.items()})
        elif isinstance(data, list) and any(int(v) < 0 for v in data):
            ids = _from_old_to_new({i: int(v) for i, v in enumerate(data)})
        elif isinstance(data, list):
            ids = [int(v) for v in data]
        else:
            raise TypeError(type(data).__name__)
    except (TypeError, ValueError) as exc:
        if "vocab.id_map" in str(exc):
            raise
        raise ValueError(f"vocab.id_map: {p} must hold a list of ids or an object of id -> id ({exc})")
    if not ids:
        raise ValueError(f"vocab.id_map: {p} keeps no tokens")
    bad = [i for i in ids if not 0 <= i < parent_vocab]
    if bad:
        raise ValueError(f"vocab.id_map: parent ids {bad[:5]} are outside the parent's vocabulary of {parent_vocab}")
    if len(set(ids)) != len(ids):
        raise ValueError("vocab.id_map: a parent id appears twice")
    return ids
