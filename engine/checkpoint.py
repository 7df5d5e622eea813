"""Atomic, checksummed checkpoints without pickle: write to a temporary directory, fsync, rename; keep the last k.

A checkpoint is a directory `step_NNNNNNNN/` holding, for each part (`model`: the model's state dict;
`train_state`: optimizer moments, schedule, RNG, ...; absent for a model-only checkpoint), `<part>.safetensors`
(every tensor of the part) and `<part>.json` (the rest of it: numbers, strings, lists, tuples, with each tensor
named by its key in the safetensors file), and `manifest.json` (step, model config, sha256 of every file).
Loading verifies every checksum and reads only JSON and safetensors: a pickle-format checkpoint (`model.pt`
from torch.save) is refused, since unpickling a planted file runs its code."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMATS = (".safetensors", ".json")  # the only files a checkpoint may hold
PICKLES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")  # torch.save / pickle files: never opened
# the codec's tags in <part>.json; a dict key starting with "$" is refused on save, so none is ambiguous
TENSOR, SAME, NDARRAY, TUPLE = "$tensor", "$same", "$ndarray", "$tuple"
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or fails its checksum."""


class PickleCheckpoint(CheckpointError):
    """A checkpoint in the old pickle format (torch.save): refused, never loaded, never skipped as corrupt."""


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
    """An unbuffered file written in full: a short write is retried, so a full disk surfaces as the OSError
    (ENOSPC) itself, never as a silently short file."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view.nbytes:
            view = view[self.raw.write(view):]
        return size


# --- the codec: a part's nested state <-> (JSON tree, {key: tensor}) ----------------------------------


def _encode(obj, key: str, tensors: dict, seen: dict):
    """`obj` as JSON, its tensors and arrays moved into `tensors` under their path in the tree. A tensor met
    twice (tied weights: one tensor, two names) is stored once and comes back as one tensor."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, torch.Tensor):
        ident = (obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.dtype, tuple(obj.shape), obj.stride(),
                 obj.device)
        if obj.numel() and ident in seen:
            return {SAME: seen[ident]}
        if obj.dtype not in _DTYPES:
            raise TypeError(f"checkpoint: cannot store {key!r}: tensor dtype {obj.dtype} has no safetensors type")
        if key in tensors:
            raise ValueError(f"checkpoint: two tensors would be stored under the key {key!r}")
        seen[ident], tensors[key] = key, obj
        return {TENSOR: key}
    if type(obj) is np.ndarray:
        if key in tensors:
            raise ValueError(f"checkpoint: two tensors would be stored under the key {key!r}")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))  # numeric dtypes only; others raise
        return {NDARRAY: key}
    if type(obj) in (list, tuple):
        items = [_encode(v, f"{key}/{i}" if key else str(i), tensors, seen) for i, v in enumerate(obj)]
        return {TUPLE: items} if type(obj) is tuple else items
    if type(obj) in (dict, OrderedDict):  # a state dict is an OrderedDict; it comes back a dict, same order
        out = {}
        for k, v in obj.items():
            if type(k) is not str or k.startswith("$"):
                raise TypeError(f"checkpoint: cannot store the key {k!r} under {key!r} (keys are strings not "
                                "starting with '$')")
            out[k] = _encode(v, f"{key}/{k}" if key else k, tensors, seen)
        return out
    raise TypeError(f"checkpoint: cannot store {key or 'the part'!r} of type {type(obj).__name__} "
                    "(tensors, arrays, numbers, strings, lists, tuples and dicts only: no pickle)")


def _decode(node, tensors: dict):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (tag, value), = node.items()
        if tag in (TENSOR, SAME, NDARRAY):
            if value not in tensors:
                raise CheckpointError(f"names the tensor {value!r}, which its safetensors file lacks")
            return tensors[value].numpy() if tag == NDARRAY else tensors[value]
        if tag == TUPLE:
            return tuple(_decode(v, tensors) for v in value)
    return {k: _decode(v, tensors) for k, v in node.items()}


def _write_safetensors(out: _WriteAll, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format (an 8-byte header length, a JSON header, the raw bytes), streamed one tensor at a
    time through `out`: safetensors' own save_file reports a full disk without its errno and refuses tied
    tensors. The files read back with safetensors' reader."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    out.write(struct.pack("<Q", len(text)))
    out.write(text)
    for t in tensors.values():
        if t.numel():
            out.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def _write(path: Path, fill) -> None:
    with open(path, "wb", buffering=0) as raw:
        fill(_WriteAll(raw))
    _fsync(path)


def save(root: Path, step: int, objects: dict[str, object], meta: dict, keep: int | None = None) -> Path:
    """Write `objects` (part name -> nested state of tensors, arrays, numbers, strings, lists, tuples, dicts)
    as checkpoint `step`. On any error (disk full, a value that cannot be stored, ...) the temporary directory
    is removed and earlier checkpoints are untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = {}
        for part, obj in objects.items():
            tensors: dict[str, torch.Tensor] = {}
            tree = json.dumps(_encode(obj, "", tensors, {}), indent=1).encode()
            for name, fill in ((f"{part}.safetensors", lambda w: _write_safetensors(w, tensors)),
                               (f"{part}.json", lambda w: w.write(tree))):
                _write(tmp / name, fill)
                files[name] = sha256(tmp / name)
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
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskFull(final, step) from exc
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


def _refuse_pickles(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLES) if path.is_dir() else []
    if pickles:
        raise PickleCheckpoint(f"checkpoint {path}: holds {', '.join(pickles)}, a pickle-format checkpoint "
                               "(torch.save), which is not accepted: unpickling a file can run arbitrary code. "
                               "Checkpoints are safetensors + JSON; write this one again with this tinyforge")


def verify(path: Path) -> dict:
    path = Path(path)
    _refuse_pickles(path)  # before anything else: such a directory is refused whatever its manifest says
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
        if Path(name).name != name or not name.endswith(FORMATS):
            raise PickleCheckpoint(f"checkpoint {path}: {MANIFEST} lists {name!r}; only .safetensors and .json "
                                   "files in the checkpoint directory are accepted (no pickle)")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} fails its sha256 checksum (corrupt or truncated)")
    return manifest


def _read_tree(path: Path, part: str):
    try:
        return json.loads((path / f"{part}.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {part}.json is not valid JSON ({exc})")


def load(path: Path, names: tuple[str, ...] = ("model", "train_state")) -> tuple[dict, dict]:
    """Verify, then load the named parts that exist (safetensors and JSON only). Returns (manifest,
    {name: object})."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = verify(path)
    parts = {}
    for part in names:
        if f"{part}.json" not in manifest["files"]:
            continue
        tree = _read_tree(path, part)
        try:
            # pread, not the default mmap: the tensors own their memory, so they stay as loaded whatever
            # later happens to the file (rewritten in place, truncated: a mapping would follow it or SIGBUS)
            tensors = load_file(path / f"{part}.safetensors", backend="pread")
            parts[part] = _decode(tree, tensors)
        except (SafetensorError, CheckpointError) as exc:
            raise CheckpointError(f"checkpoint {path}: {part}: {exc}")
    return manifest, parts


def load_tensor(path: Path, name: str, part: str = "model") -> torch.Tensor:
    """One top-level tensor of a part (a state dict's entry), read alone: only its pages of the file are
    touched. Verify the checkpoint first."""
    from safetensors import safe_open

    path = Path(path)
    ref = _read_tree(path, part).get(name)
    key = ref.get(TENSOR, ref.get(SAME)) if isinstance(ref, dict) else None
    if key is None:
        raise KeyError(f"checkpoint {path}: {part} has no tensor {name}")
    with safe_open(str(path / f"{part}.safetensors"), "pt") as f:
        return f.get_tensor(key)


def latest_valid(root: Path, on_corrupt=None) -> Path | None:
    """Newest checkpoint that passes verification; corrupt ones are reported and skipped. A pickle-format
    one raises: it is refused, not passed over for an older one (nor for a fresh start)."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path
        except PickleCheckpoint:
            raise
        except CheckpointError as exc:
            if on_corrupt:
                on_corrupt(path, str(exc))
    return None
