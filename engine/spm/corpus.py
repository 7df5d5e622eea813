"""Streaming text for the tokenizer tools. Files and folders are listed the way the data pipeline
lists them (engine.data), and text is cut into the same line-aligned chunks the pipeline tokenises,
so counts match what training sees; plain files are read line by line, never whole."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from engine.data import DataError, iter_documents, list_files


def corpus_files(sources: list[str], field: str = "sources") -> list[Path]:
    try:
        return list_files([str(s) for s in sources])
    except DataError as exc:  # same check, this stage's field name
        raise DataError(str(exc).replace("data.sources", field, 1)) from None


def _lines(path: Path, field: str) -> Iterator[str]:
    """Lines with their newline (UTF-8); JSONL yields each document's lines."""
    if path.suffix == ".jsonl":
        for doc in iter_documents(path):
            yield from doc.splitlines(keepends=True)
            yield ""  # document boundary: a chunk never spans two documents
        return
    try:
        with path.open(encoding="utf-8") as f:  # universal newlines, as read_text() in engine.data
            yield from f
    except UnicodeDecodeError as exc:
        raise DataError(f"{field}: {path} is not UTF-8 text ({exc})") from None


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
