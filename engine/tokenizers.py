"""Tokenizers the engine trains with: a built-in byte tokenizer, or a SentencePiece model file.

The SentencePiece tooling (train, count, compact) lives in engine/spm; this module only loads."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then <bos>, <eos>, <pad>. Needs no training; the baseline."""
    name = "byte"

    def __init__(self):
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258
        self.vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte-v1"


class SentencePieceTokenizer:
    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data.tokenizer: no SentencePiece model at {self.path}")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.name = str(self.path)
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        if self.eos_id < 0:
            raise ValueError(f"data.tokenizer: {self.path} defines no </s> (eos) piece, needed as document separator")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def load_tokenizer(spec: str):
    """`byte`, or a path to a SentencePiece .model file."""
    if spec == "byte":
        return ByteTokenizer()
    return SentencePieceTokenizer(spec)


def smallest_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
