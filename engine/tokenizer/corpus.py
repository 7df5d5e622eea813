"""Streaming text for the tokenizer tools. Files and folders are listed the way the data pipeline
lists them (engine.data), and text is cut into the same line-aligned chunks the pipeline tokenises,
so counts match what training sees; plain (and .xz/.gz compressed) files are read line by line, never whole."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from engine.data import COMPRESSED, READ_ERRORS, DataError, iter_documents, list_files, open_text, text_suffix


def corpus_files(sources: list[str], field: str = "sources") -> list[Path]:
    try:
        return list_files([str(s) for s in sources])
    except DataError as exc:  # same check, this stage's field name
        raise DataError(str(exc).replace("data.sources", field, 1)) from None


def text_size(path: Path) -> int:
    """Bytes of text in a file: its size, or for .xz/.gz its decompressed size (streamed, about 0.1 s
    per 10 MB), so that progress against it is in the units encoding reports."""
    if path.suffix not in COMPRESSED:
        return path.stat().st_size
    n = 0
    try:
        with COMPRESSED[path.suffix](path, "rb") as f:
            while block := f.read(1 << 20):
                n += len(block)
    except READ_ERRORS as exc:
        raise DataError(f"sources: {path} is not a readable {path.suffix} file ({exc})") from None
    return n


def _lines(path: Path, field: str) -> Iterator[str]:
    """Lines with their newline (UTF-8; .xz and .gz decompressed); JSONL yields each document's lines."""
    if text_suffix(path) == ".jsonl":
        for doc in iter_documents(path):
            yield from doc.splitlines(keepends=True)
            yield ""  # document boundary: a chunk never spans two documents
        return
    try:
        with open_text(path) as f:  # universal newlines, as iter_documents in engine.data
            yield from f
    except READ_ERRORS as exc:
        what = "UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"a readable {path.suffix} file"
        raise DataError(f"{field}: {path} is not {what} ({exc})") from None


def iter_chunks(files: list[Path], chunk_bytes: int = 4096, field: str = "sources") -> Iterator[str]:
    """Line-aligned chunks of at least chunk_bytes (the last of a document may be shorter); the cut
    points equal engine.data.chunk_lines on the whole document."""
    for path in files:
        cur: list[str] = []
        size = 0
        for line in _lines(path, field):
            if not line:  # JSONL document boundary
                if cur:
                    yield "".join(cur)
                cur, size = [], 0
                continue
            cur.append(line)
            size += len(line.encode("utf-8"))
            if size >= chunk_bytes:
                yield "".join(cur)
                cur, size = [], 0
        if cur:
            yield "".join(cur)


def iter_sentences(files: list[Path], field: str = "sources") -> Iterator[str]:
    """Non-empty lines without their newline: what the SentencePiece trainer reads."""
    for path in files:
        for line in _lines(path, field):
            line = line.rstrip("\r\n")
            if line:
                yield line


def batches(chunks: Iterator[str], batch_bytes: int) -> Iterator[list[str]]:
    """Group chunks into lists of about batch_bytes (the unit of work of one encode task)."""
    batch: list[str] = []
    size = 0
    for c in chunks:
        batch.append(c)
        size += len(c)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
