"""Corpus -> packed token shards (memory-mapped) -> deterministic, resumable batches.

A corpus is files, folders or JSONL (`{"text": ...}` per line). Each document is cut into
line-aligned chunks; a stable hash of (file, chunk) puts each chunk in train or validation, so
the split is deterministic and every domain lands on both sides. Chunks are tokenised once,
documents end with the tokenizer's eos, and the ids are written as flat uint16/uint32 shards
with a meta.json beside them."""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.paths import state_home
from engine.tokenizer.load import load_tokenizer, smallest_dtype, token_byte_lengths

TEXT_SUFFIXES = {".txt", ".md", ".py", ".json", ".jsonl", ".text", ""}
COMPRESSED = {".xz": lzma.open, ".gz": gzip.open}  # read transparently: FILE.txt.xz, FILE.jsonl.gz, ...
SHARD_TOKENS = 1 << 27  # tokens per shard file


class DataError(ValueError):
    """Bad corpus input; the message names the field."""


def list_files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise DataError(f"data.sources: {src} does not exist")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and text_suffix(f) in TEXT_SUFFIXES)
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise DataError(f"data.sources: no text files found in {sources}")
    return files


def text_suffix(path: Path) -> str:
    """The suffix of the text inside: `.txt` for a.txt, a.txt.xz and a.txt.gz."""
    path = Path(path)
    return Path(path.stem).suffix if path.suffix in COMPRESSED else path.suffix


def open_text(path: Path):
    """A UTF-8 text stream with universal newlines (as read_text), decompressing .xz and .gz."""
    path = Path(path)
    opener = COMPRESSED.get(path.suffix)
    return opener(path, "rt", encoding="utf-8") if opener else path.open(encoding="utf-8")


def _read_error(path: Path, exc: Exception) -> DataError:
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"data.sources: {path} is not UTF-8 text ({exc})")
    return DataError(f"data.sources: {path} is not a readable {path.suffix} file ({exc})")


READ_ERRORS = (UnicodeDecodeError, lzma.LZMAError, gzip.BadGzipFile, EOFError)


def iter_documents(path: Path) -> Iterator[str]:
    try:
        if text_suffix(path) == ".jsonl":
            with open_text(path) as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError) as exc:
                            raise DataError(f"data.sources: {path}:{n} is not a JSON object with a 'text' field "
                                            f"({exc})")
        else:
            with open_text(path) as f:
                text = f.read()
            yield text
    except READ_ERRORS as exc:
        raise _read_error(path, exc) from None


def chunk_lines(text: str, chunk_bytes: int) -> list[str]:
    chunks, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line.encode("utf-8"))
        if size >= chunk_bytes:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))
    return chunks


def in_validation(key: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little")
    return h / 2**64 < val_fraction


def dataset_key(files: list[Path], tokenizer, val_fraction: float, chunk_bytes: int) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(f"{tokenizer.fingerprint()}:{val_fraction}:{chunk_bytes}:v2".encode())  # v2: token_bytes.npy
    return h.hexdigest()[:20]


def prepare(sources: list[str], tokenizer, cache_root: Path, val_fraction: float = 0.05,
            chunk_bytes: int = 4096, log=print) -> Path:
    """Tokenise the corpus once into `cache_root/<key>/`; later calls reuse it."""
    files = list_files(sources)
    out = Path(cache_root) / dataset_key(files, tokenizer, val_fraction, chunk_bytes)
    if (out / "meta.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = smallest_dtype(tokenizer.vocab_size)
    writers = {split: ShardWriter(tmp, split, dtype) for split in ("train", "val")}
    n_bytes = {"train": 0, "val": 0}
    for f in files:
        for d, doc in enumerate(iter_documents(f)):
            chunks = chunk_lines(doc, chunk_bytes)
            sides = ["val" if in_validation(f"{f.name}:{d}:{c}", val_fraction) else "train" for c in range(len(chunks))]
            ids = tokenizer.encode_batch(chunks)
            for c, (side, chunk_ids) in enumerate(zip(sides, ids)):
                writers[side].write(chunk_ids)
                n_bytes[side] += len(chunks[c].encode("utf-8"))
                if c + 1 == len(chunks) or sides[c + 1] != side:
                    writers[side].write([tokenizer.eos_id])  # a document (or its part on this side) ends
    counts = {split: w.close() for split, w in writers.items()}
    if counts["train"] == 0 or sum(n_bytes.values()) == 0:
        shutil.rmtree(tmp)
        raise DataError(f"data.sources: the corpus {sources} is empty")
    table = token_byte_lengths(tokenizer)  # what bits-per-byte divides by (engine/tokenizer/load.py has the convention)
    np.save(tmp / "token_bytes.npy", table)
    token_bytes = {split: int(sum(np.bincount(np.memmap(tmp / n, dtype=dtype, mode="r"), minlength=len(table)) @ table
                                  for n in w.names)) for split, w in writers.items()}
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
            "tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint(),
            "sources": [str(f) for f in files], "val_fraction": val_fraction, "chunk_bytes": chunk_bytes,
            "tokens": counts, "bytes": n_bytes, "token_bytes": token_bytes,
            "shards": {s: w.names for s, w in writers.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"tokenised {len(files)} files: {counts['train']:,} train / {counts['val']:,} val tokens -> {out}")
    return out


def prepare_data(data, tokenizer: str | None = None, log=print) -> tuple[Path, object]:
    """What every stage does before it opens a split: load the tokenizer and tokenise the corpus with it (once,
    cached). `data` is a DataSpec or has its fields (sources, tokenizer, val_fraction, chunk_bytes, cache_dir:
    inherit's calib); `tokenizer` names another tokenizer than data.tokenizer. Returns the prepared directory
    (TokenData.open it) and the tokenizer."""
    tok = load_tokenizer(tokenizer or data.tokenizer)
    cache = Path(data.cache_dir) if data.cache_dir else state_home() / "datasets"
    return prepare(data.sources, tok, cache, data.val_fraction, data.chunk_bytes, log=log), tok


class ShardWriter:
    def __init__(self, root: Path, split: str, dtype):
        self.root, self.split, self.dtype = root, split, dtype
        self.names: list[str] = []
        self.count = self.in_shard = 0
        self.f = None

    def write(self, ids):
        arr = np.asarray(ids, dtype=np.int64)
        while arr.size:
            if self.f is None or self.in_shard >= SHARD_TOKENS:
                self._next_shard()
            take = arr[: SHARD_TOKENS - self.in_shard]
            self.f.write(take.astype(self.dtype).tobytes())
            self.in_shard += take.size
            self.count += take.size
            arr = arr[take.size:]

    def _next_shard(self):
        if self.f:
            self.f.close()
        name = f"{self.split}_{len(self.names):05d}.bin"
        self.names.append(name)
        self.f = open(self.root / name, "wb")
        self.in_shard = 0

    def close(self) -> int:
        if self.f:
            self.f.close()
        return self.count


def load_token_bytes(root: Path, meta: dict) -> np.ndarray:
    """The dataset's per-id byte table; a folder prepared before it existed (dataset key v1) gets it
    from its tokenizer, when that still has the fingerprint the folder was made with."""
    path = root / "token_bytes.npy"
    if not path.exists():
        from engine.tokenizer.load import load_tokenizer
        try:
            tok = load_tokenizer(meta["tokenizer"])
        except (OSError, ValueError) as exc:
            raise DataError(f"data: {root} has no token_bytes.npy and its tokenizer cannot be loaded ({exc}); "
                            "delete the folder to tokenise again") from None
        if tok.fingerprint() != meta.get("tokenizer_fingerprint"):
            raise DataError(f"data: {root} has no token_bytes.npy and its tokenizer {meta['tokenizer']} has "
                            "changed since; delete the folder to tokenise again")
        tmp = root / f"token_bytes.tmp{os.getpid()}.npy"
        np.save(tmp, token_byte_lengths(tok))
        os.replace(tmp, path)
    return np.load(path)


@dataclass
class TokenData:
    """One split as fixed windows of seq_len + 1 tokens, never crossing a shard boundary.

    `token_bytes[id]` is the UTF-8 bytes an id decodes to (engine.tokenizer.load.token_byte_lengths):
    bits-per-byte over scored targets y is their summed loss / ln 2 / token_bytes[y].sum().
    `mean_bytes_per_token` is the whole split's text bytes / tokens (eos included): for converting
    token counts of training into bytes of text, never for scoring a subset."""
    shards: list[np.ndarray]
    seq_len: int
    token_bytes: np.ndarray
    mean_bytes_per_token: float

    @classmethod
    def open(cls, root: Path, split: str, seq_len: int, vocab_limit: int | None = None) -> "TokenData":
        meta = json.loads((Path(root) / "meta.json").read_text())
        if vocab_limit is not None and meta["vocab_size"] > vocab_limit:
            raise DataError(f"model.vocab_size: {vocab_limit} is smaller than the tokenizer's {meta['vocab_size']} "
                            "ids; token ids would be out of range")
        shards = [np.memmap(Path(root) / n, dtype=meta["dtype"], mode="r") for n in meta["shards"][split]]
        tokens = max(meta["tokens"][split], 1)
        return cls(shards, seq_len, load_token_bytes(Path(root), meta), meta["bytes"][split] / tokens)

    def __post_init__(self):
        self.per_shard = [max((len(s) - 1) // self.seq_len, 0) for s in self.shards]
        self.offsets = np.cumsum([0] + self.per_shard)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, i: int) -> np.ndarray:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        start = (i - int(self.offsets[s])) * self.seq_len
        return self.shards[s][start: start + self.seq_len + 1]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.stack([self.window(int(i)).astype(np.int64) for i in indices]))
        return w[:, :-1], w[:, 1:]

    def target_bytes(self, y) -> int:
        """UTF-8 bytes of text that the target ids `y` (any shape) stand for."""
        y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return int(self.token_bytes[y].sum(dtype=np.int64))


class BatchSampler:
    """Global batch `step` = a seeded permutation of all windows, cut into batches per epoch.
    A pure function of (seed, step), so resuming needs only the step; ranks take equal slices of
    the same global batch, so results do not depend on the world size."""

    def __init__(self, n_windows: int, global_batch: int, seed: int):
        if n_windows < global_batch:
            raise DataError(f"batch: the training split has {n_windows} windows, fewer than one global batch "
                            f"of {global_batch}; use a smaller batch or sequence length, or more data")
        self.n_windows, self.global_batch, self.seed = n_windows, global_batch, seed
        self.batches_per_epoch = n_windows // global_batch
        self._perm_epoch, self._perm = -1, None

    def batch_id(self, step: int) -> int:
        """Steps beyond one epoch wrap; batch ids name epoch-0 batches (what multi-round scoring ranks)."""
        return step % self.batches_per_epoch

    def windows(self, step: int, epoch: int | None = None) -> np.ndarray:
        epoch = step // self.batches_per_epoch if epoch is None else epoch
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        b = step % self.batches_per_epoch
        return self._perm[b * self.global_batch: (b + 1) * self.global_batch]


def rank_slice(windows: np.ndarray, rank: int, world: int) -> np.ndarray:
    per = len(windows) // world
    return windows[rank * per: (rank + 1) * per]


class SubsetSampler:
    """Trains on a chosen list of epoch-0 batch ids (multi-round replay): each pass over the list
    is a fresh seeded permutation of it. Also a pure function of (seed, step)."""

    def __init__(self, base: BatchSampler, batch_ids, seed: int):
        self.base, self.ids, self.seed = base, np.asarray(batch_ids, dtype=np.int64), seed
        if self.ids.size == 0:
            raise DataError("data.batch_ids: the list of batches is empty")
        if self.ids.min() < 0 or self.ids.max() >= base.batches_per_epoch:
            raise DataError(f"data.batch_ids: ids must lie in [0, {base.batches_per_epoch}) (batches per epoch)")
        self._pass, self._order = -1, None

    def batch_id(self, step: int) -> int:
        p = step // len(self.ids)
        if p != self._pass:
            self._order = np.random.default_rng([self.seed, 1 << 20, p]).permutation(len(self.ids))
            self._pass = p
        return int(self.ids[self._order[step % len(self.ids)]])

    def windows(self, step: int) -> np.ndarray:
        return self.base.windows(self.batch_id(step), epoch=0)


class WindowSubsetSampler:
    """Trains on a chosen list of windows (per-sequence multi-round replay): each pass is a fresh
    seeded permutation of the list cut into global batches (a remainder short of a batch waits for
    a later pass). A pure function of (seed, step) like the others."""

    def __init__(self, n_windows: int, window_ids, global_batch: int, seed: int):
        self.ids, self.global_batch, self.seed = np.asarray(window_ids, dtype=np.int64), global_batch, seed
        if self.ids.size < global_batch:
            raise DataError(f"data.window_ids: {self.ids.size} windows, fewer than one global batch of {global_batch}")
        if self.ids.min() < 0 or self.ids.max() >= n_windows:
            raise DataError(f"data.window_ids: ids must lie in [0, {n_windows}) (windows of the training split)")
        self.batches_per_pass = self.ids.size // global_batch
        self._pass, self._perm = -1, None

    def windows(self, step: int) -> np.ndarray:
        p, b = divmod(step, self.batches_per_pass)
        if p != self._pass:
            self._perm = np.random.default_rng([self.seed, 2 << 20, p]).permutation(self.ids)
            self._pass = p
        return self._perm[b * self.global_batch: (b + 1) * self.global_batch]


def load_batch_ids(path: str, field: str = "data.batch_ids") -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{field}: {p} does not exist")
    return np.load(p) if p.suffix == ".npy" else np.asarray(json.loads(p.read_text()), dtype=np.int64)
