"""Atomic, checksummed checkpoints: write to a temporary directory, fsync, rename; keep the last k.

A checkpoint is a directory `step_NNNNNNNN/` holding `model.pt` (the model's state dict),
`train_state.pt` (optimizer, scheduler, sampler, RNG; absent for a model-only checkpoint) and
`manifest.json` (step, model config, sha256 of every file). Loading verifies every checksum."""
from __future__ import annotations

import errno
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


class DiskFull(OSError):
    """ENOSPC while writing a checkpoint; the partial write is already removed."""

    def __init__(self, path: Path, step: int):
        self.path = path
        free = shutil.disk_usage(path.parent).free
        super().__init__(errno.ENOSPC, f"no space left on device writing checkpoint step {step} to {path} "
                                       f"({free / 2**20:.2f} MiB free); the partial write was removed, "
                                       "earlier checkpoints are intact", str(path))

    def __str__(self) -> str:
        return self.strerror


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


class _WriteAll:
    """The file torch.save writes to: every byte or an OSError, remembered. Through a path, or a buffered
    file, a full disk reaches torch as a short write and surfaces only as a RuntimeError about positions."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        try:
            while view.nbytes:
                view = view[self.raw.write(view):]
        except OSError as exc:
            self.error = exc
            raise
        return size

    def flush(self) -> None:
        pass


def save(root: Path, step: int, objects: dict[str, object], meta: dict, keep: int | None = None) -> Path:
    """Write `objects` (file stem -> picklable state) as checkpoint `step`. On any error (disk full,
    ...) the temporary directory is removed and earlier checkpoints are untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = None
    try:
        tmp.mkdir()
        files = {}
        for stem, obj in objects.items():
            path = tmp / f"{stem}.pt"
            with open(path, "wb", buffering=0) as raw:
                writer = _WriteAll(raw)
                torch.save(obj, writer)
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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = writer.error if writer and writer.error else exc
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            raise DiskFull(final, step) from cause
        raise
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove temporary directories left by writers that were killed mid-save (never valid checkpoints)."""
    root = Path(root)
    stale = sorted(root.glob(".step_*.tmp*")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupt ({exc})")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "step" not in manifest:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} lacks its step or file checksums (corrupt)")
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
