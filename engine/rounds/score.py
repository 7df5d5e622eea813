"""The scoring pass: the loss of every pool sequence under a frozen model, forward only.

Sequences are scored in chunks of `chunk` windows; each finished chunk is saved atomically, so a
pass killed halfway continues where it stopped, and a chunk's result does not depend on when it
was computed (same windows, same micro-batches). Under torchrun, chunk c belongs to rank
c % world_size; the ranks' results are summed into every rank with one all-reduce. Per-batch scores
are the mean of a batch's sequence losses (= its token-mean loss, all windows being equally long)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from engine.backend import Backend
from engine.data import TokenData
from engine.distributed import World, barrier
from engine.model import GPT
from engine.run_record import write_json_atomic

# fp32 logits materialised at once while scoring. Small enough that the log-softmax reads the logits the
# product has just written while they are still in the last-level cache: on a 2-core Xeon (AMX, bf16),
# 16-row slices of a 64-row micro-batch (vocab 2,048) made the compiled log-softmax 2.3x faster and the
# scoring pass 11-18% faster than 256 MiB (one slice); 3-4% eager.
LOGIT_BYTES = 32 << 20


@torch.inference_mode()
def sequence_losses(model: GPT, x: torch.Tensor, y: torch.Tensor, backend: Backend,
                    compiled: bool = False) -> torch.Tensor:
    """Mean cross-entropy of each row of x -> y, [B] fp32 on the CPU. The output projection runs on a
    few rows at a time so that a large scoring batch never holds its full [B, T, V] logits. `compiled`:
    through torch.compile (a long pool repays it: the element-wise ops and the log-softmax fuse)."""
    with backend.autocast():
        return (_compiled_losses if compiled else _losses)(model, x, y).float().cpu()


def _losses(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = model.hidden(x)
    w = model.lm_head.weight
    rows = max(1, LOGIT_BYTES // (4 * x.shape[1] * w.shape[0]))
    out = []
    for i in range(0, x.shape[0], rows):
        logits = F.linear(h[i:i + rows], w).float()
        ce = F.cross_entropy(logits.flatten(0, 1), y[i:i + rows].flatten(), reduction="none")
        out.append(ce.view(logits.shape[0], -1).mean(1))
    return torch.cat(out)


def _compiled_losses(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _compiled_losses_fn()(model, x, y)


@functools.cache
def _compiled_losses_fn():
    """torch.compile of _losses, made on first use (with the persistent compile cache) and kept."""
    from engine.compiling import enable_persistent_cache
    enable_persistent_cache()
    return torch.compile(_losses)


@dataclass
class ScorePass:
    losses: np.ndarray  # [n_windows] loss of each window, in the order given
    tokens: int  # tokens scored by this call (not counting chunks found on disk)
    seconds: float  # wall time of this call
    chunks: int
    resumed_chunks: int  # chunks found on disk from an earlier, interrupted call

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else 0.0


def fingerprint(manifest: dict, data_dir: Path, windows: np.ndarray, seq_len: int, chunk: int,
                precision: str, compiled: bool) -> dict:
    """What a pass's chunks depend on; chunks recorded under another fingerprint are discarded
    (compiled and eager losses differ in the last bits, so a resume never mixes them)."""
    return {"model": manifest["files"].get("model.safetensors"), "data_dir": str(data_dir), "seq_len": seq_len,
            "chunk": chunk, "n_windows": int(len(windows)), "precision": precision, "compiled": compiled,
            "windows_sha256": hashlib.sha256(np.ascontiguousarray(windows, dtype=np.int64)).hexdigest()}


def score_windows(model: GPT, data: TokenData, windows: np.ndarray, out_dir: str | Path, key: dict, *,
                  backend: Backend, world: World, micro_batch: int, chunk: int, progress=None,
                  compiled: bool = False) -> ScorePass:
    """Loss of every window in `windows`, resumable from `out_dir`. `progress(done, total)` is called
    after each chunk; SIGTERM stops after the chunk in hand (engine.train.Preempted)."""
    from engine.train import Preempted

    out = Path(out_dir)
    windows = np.asarray(windows, dtype=np.int64)
    n_chunks = math.ceil(len(windows) / chunk)
    final = out / "losses.npy"
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        recorded = json.loads((out / "pass.json").read_text()) if (out / "pass.json").exists() else None
        if recorded != key:  # another model, data or chunking: nothing on disk is valid for this pass
            for f in out.glob("*.npy"):
                f.unlink()
            write_json_atomic(out / "pass.json", key)
    barrier(world)
    if final.exists():
        losses = np.load(final)
        if len(losses) == len(windows):
            return ScorePass(losses, 0, 0.0, n_chunks, n_chunks)

    stop = {"flag": False}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) if in_main_thread else None
    t0 = time.perf_counter()
    mine = [c for c in range(n_chunks) if c % world.size == world.rank]
    full = torch.zeros(len(windows) + 1, dtype=torch.float64)  # last slot: windows scored by this call
    resumed = 0
    try:
        for done, c in enumerate(mine, 1):
            lo, hi = c * chunk, min((c + 1) * chunk, len(windows))
            path = out / f"chunk_{c:06d}.npy"
            values = _load_chunk(path, hi - lo)
            if values is None:
                values = _score_range(model, data, windows[lo:hi], micro_batch, backend, compiled)
                _save_atomic(path, values)
                full[-1] += hi - lo
            else:
                resumed += 1
            full[lo:hi] = torch.from_numpy(values)
            if progress:
                progress(done * world.size, n_chunks)
            if stop["flag"] and done < len(mine):
                raise Preempted(f"stopped by SIGTERM while scoring; {done} of {len(mine)} chunks saved")
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if world.size > 1 and dist.is_initialized():
        reduced = full.to(backend.device)
        dist.all_reduce(reduced)
        full = reduced.cpu()
    losses = full[:-1].numpy()
    if world.is_main:
        _save_atomic(final, losses)
    barrier(world)
    scored = int(full[-1].item())
    return ScorePass(losses, scored * data.seq_len, time.perf_counter() - t0, n_chunks, resumed)


def _score_range(model: GPT, data: TokenData, windows: np.ndarray, micro_batch: int, backend: Backend,
                 compiled: bool) -> np.ndarray:
    out = []
    for s in range(0, len(windows), micro_batch):
        x, y = data.batch(windows[s:s + micro_batch])
        out.append(sequence_losses(model, x.to(backend.device), y.to(backend.device), backend, compiled).numpy())
    return np.concatenate(out).astype(np.float64)


def _load_chunk(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        values = np.load(path)
    except (ValueError, OSError, EOFError):  # unreadable: recompute it
        return None
    return values if values.shape == (n,) else None


def _save_atomic(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, values)
    os.replace(tmp, path)


def batch_scores(window_losses: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-batch scores from per-window losses laid out batch after batch."""
    return window_losses.reshape(-1, batch_size).mean(axis=1)
