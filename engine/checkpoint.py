"""Atomic, checksummed checkpoints: write to a temporary directory, fsync, rename; keep the last k.

A checkpoint is a directory `step_NNNNNNNN/` holding `model.pt` (the model's state dict),
`train_state.pt` (optimizer, scheduler, sampler, RNG; absent for a model-only checkpoint) and
`manifest.json` (step, model config, sha256 of every file). Loading verifies every checksum."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or fails its checksum."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: Path, step: int, objects: dict[str, object], meta: dict, keep: int | None = None) -> Path:
    """Write `objects` (file stem -> picklable state) as checkpoint `step`. On any error (disk full,
    ...) the temporary directory is removed and earlier checkpoints are untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = {}
        for stem, obj in objects.items():
            path = tmp / f"{stem}.pt"
            torch.save(obj, path)
            _fsync(path)
            files[path.name] = sha256(path)
        manifest = {"step": step, "files": files, "created_at": time.time(), **meta}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def verify(path: Path) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"checkpoint {path}: no {MANIFEST} (not a checkpoint, or incomplete)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupt ({exc})")
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} fails its sha256 checksum (corrupt or truncated)")
    return manifest


def load(path: Path, names: tuple[str, ...] = ("model", "train_state")) -> tuple[dict, dict]:
    """Verify, then load the named parts that exist. Returns (manifest, {name: object})."""
    manifest = verify(path)
    parts = {n: torch.load(Path(path) / f"{n}.pt", map_location="cpu", weights_only=False)
             for n in names if f"{n}.pt" in manifest["files"]}
    return manifest, parts


def latest_valid(root: Path, on_corrupt=None) -> Path | None:
    """Newest checkpoint that passes verification; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            if on_corrupt:
                on_corrupt(path, str(exc))
    return None
