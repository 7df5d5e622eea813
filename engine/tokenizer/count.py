"""Token frequencies of a SentencePiece model over a corpus.

Two ways in:
- text: chunks of lines are encoded in parallel, one process per core, each returning a bincount of
  its batch; at most two batches per worker are in flight, so memory stays bounded whatever the
  corpus size;
- token shards (flat little-endian uint16/uint32 .bin files, as engine.data writes them): a
  vectorised np.bincount over memory-mapped blocks, no decoding at all.

The frequency file is an int64 .npy array indexed by token id (the format `compact` reads), with a
TSV beside it (`id<TAB>count<TAB>piece`, piece escaped) for people."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

SHARD_BLOCK = 1 << 22  # tokens per bincount block: bounds the int64 temporary to 32 MiB


@dataclass
class Counts:
    counts: np.ndarray  # int64, one entry per token id
    n_bytes: int  # UTF-8 bytes of the text encoded (0 when counted from shards)
    seconds: float

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())


def model_bytes(model) -> bytes:
    """A .model path or serialized model proto bytes."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    p = Path(model)
    if not p.is_file():
        raise FileNotFoundError(f"model: no SentencePiece model at {p}")
    return p.read_bytes()


# -- parallel text encoding --------------------------------------------------------------------
_SP = None


def _init_worker(proto: bytes) -> None:
    global _SP
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_proto=proto)


def _count_batch(texts: list[str]) -> tuple[np.ndarray, int]:
    ids = _SP.encode(texts, num_threads=1)  # one core per worker: the pool is the parallelism
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
    return np.bincount(flat, minlength=_SP.get_piece_size()), sum(len(t.encode("utf-8")) for t in texts)


def _context():
    """fork where there is one: no re-import of the caller's __main__ (scripts need no main guard)
    and instant start; the children only run sentencepiece and numpy."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def count_text(model, sources: list[str], workers: int | None = None, chunk_bytes: int = 4096,
               batch_bytes: int = 1 << 20, progress=None, progress_every_s: float = 5.0) -> Counts:
    """Encode `sources` (files, folders, JSONL) with `model` on `workers` processes (default: all
    cores) and count every token id. `progress(done_bytes, total_bytes, elapsed_s)` is called every
    `progress_every_s` seconds."""
    from engine.tokenizer.corpus import batches, corpus_files, iter_chunks, text_size

    proto = model_bytes(model)
    files = corpus_files(sources)
    total = sum(map(text_size, files)) if progress else 0
    workers = max(1, workers or os.cpu_count() or 1)
    _init_worker(proto)
    counts = np.zeros(_SP.get_piece_size(), dtype=np.int64)
    n_bytes, t0, last = 0, time.time(), time.time()
    work = batches(iter_chunks(files, chunk_bytes), batch_bytes)

    def add(result):
        nonlocal n_bytes, last
        c, b = result
        counts[:] += c
        n_bytes += b
        if progress and time.time() - last >= progress_every_s:
            last = time.time()
            progress(n_bytes, total, last - t0)

    if workers == 1:
        for batch in work:
            add(_count_batch(batch))
    else:
        with _context().Pool(workers, initializer=_init_worker, initargs=(proto,)) as pool:
            pending: deque = deque()
            for batch in work:
                pending.append(pool.apply_async(_count_batch, (batch,)))
                while len(pending) >= 2 * workers:
                    add(pending.popleft().get())
            while pending:
                add(pending.popleft().get())
    return Counts(counts, n_bytes, time.time() - t0)


# -- token shards --------------------------------------------------------------------------------
def shard_files(paths: list[str], dtype: str | None = None) -> list[tuple[Path, np.dtype]]:
    """.bin files, or dataset folders written by engine.data (their meta.json names dtype and shards)."""
    out = []
    for src in paths:
        p = Path(src)
        if p.is_dir():
            meta_path = p / "meta.json"
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                names = [n for split in meta["shards"].values() for n in split]
                out += [(p / n, np.dtype(dtype or meta["dtype"])) for n in names]
                continue
            files = sorted(p.rglob("*.bin"))
            if not files:
                raise FileNotFoundError(f"shards: no .bin files in {p}")
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"shards: {p} does not exist")
        if dtype is None:
            raise ValueError(f"shards: {p} has no meta.json beside it; give shard_dtype (uint16 or uint32)")
        out += [(f, np.dtype(dtype)) for f in files]
    if not out:
        raise ValueError("shards: no shard files given")
    for f, dt in out:
        if dt not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError(f"shard_dtype: expected uint16 or uint32, got {dt}")
        if f.stat().st_size % dt.itemsize:
            raise ValueError(f"shards: {f} is {f.stat().st_size} bytes, not a whole number of {dt} tokens")
    return out


def count_shards(paths: list[str], vocab_size: int, dtype: str | None = None, block: int = SHARD_BLOCK) -> Counts:
    """Vectorised count over memory-mapped shards: np.bincount per block of `block` tokens."""
    t0 = time.time()
    counts = np.zeros(vocab_size, dtype=np.int64)
    for f, dt in shard_files(paths, dtype):
        if f.stat().st_size == 0:
            continue
        ids = np.memmap(f, dtype=dt.newbyteorder("<"), mode="r")
        for start in range(0, len(ids), block):
            c = np.bincount(ids[start:start + block], minlength=vocab_size)
            if len(c) > vocab_size:
                bad = int(np.nonzero(c[vocab_size:])[0][0]) + vocab_size
                raise ValueError(f"shards: {f} holds token id {bad}, outside the model's vocabulary of {vocab_size}")
            counts += c
    return Counts(counts, 0, time.time() - t0)


# -- the frequency file --------------------------------------------------------------------------
def _escape(piece: str) -> str:
    return piece.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def save_counts(counts: np.ndarray, path: str | Path, pieces: list[str] | None = None) -> list[Path]:
    """Write PATH.npy (int64 by id) and PATH.tsv (id, count, piece); returns both paths."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".npy", ".tsv") else base
    base.parent.mkdir(parents=True, exist_ok=True)
    npy, tsv = base.with_name(base.name + ".npy"), base.with_name(base.name + ".tsv")
    np.save(npy, np.asarray(counts, dtype=np.int64))
    with tsv.open("w", encoding="utf-8") as f:
        f.write("id\tcount\tpiece\n")
        for i, c in enumerate(counts):
            f.write(f"{i}\t{int(c)}\t{_escape(pieces[i]) if pieces else ''}\n")
    return [npy, tsv]


def load_counts(path: str | Path, vocab_size: int) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"counts: {p} does not exist")
    if p.suffix == ".npy":
        counts = np.load(p, allow_pickle=False)
    else:
        rows = [line.split("\t") for line in p.read_text(encoding="utf-8").splitlines()[1:] if line]
        try:
            counts = np.zeros(max((int(r[0]) for r in rows), default=-1) + 1, dtype=np.int64)
            for r in rows:
                counts[int(r[0])] = int(r[1])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"counts: {p} is not an id<TAB>count<TAB>piece file ({exc})") from None
    if counts.ndim != 1 or len(counts) != vocab_size:
        raise ValueError(f"counts: {p} has {counts.size} entries, the model has {vocab_size} pieces")
    if (counts < 0).any():
        raise ValueError(f"counts: {p} holds negative counts")
    return counts.astype(np.int64)
