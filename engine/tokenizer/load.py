"""Tokenizers the engine trains with: a built-in byte tokenizer, or a SentencePiece model file.

The SentencePiece tooling (train, count, compact) is this package's other modules; this one only loads."""
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

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (see token_byte_lengths): 1 for 0..255, 0 for the specials."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        out[:256] = 1
        return out


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

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (see token_byte_lengths): the piece's UTF-8 length with U+2581
        as a space, 1 for a byte-fallback piece <0xNN>, 0 for control (<s>, </s>), unknown and unused ids."""
        sp = self.sp
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                out[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out


def token_byte_lengths(tokenizer) -> np.ndarray:
    """The bits-per-byte denominator, one number per id: how many UTF-8 bytes of text the id decodes to
    in running text. Bits-per-byte over any set of scored targets is (their summed loss in nats) / ln 2 /
    (this table summed over those same target ids), so a partial evaluation is normalised by the text it
    actually scored, not by a split-wide average.

    Convention (checked against decoding in tests/engine/test_bpb.py): byte tokenizer: 1 for ids 0..255, 0 for
    <bos>/<eos>/<pad>. SentencePiece: the piece's UTF-8 length with U+2581 read as a space; byte-fallback
    pieces <0xNN> 1 each (a character split into byte pieces counts its true UTF-8 length); control,
    unknown and unused pieces 0 (eos decodes to nothing; <unk> has no recoverable text). SentencePiece's
    dummy prefix (the U+2581 it adds before each encoded chunk, which decode() drops only at the very
    start of a decoded sequence) is counted as the 1-byte space it decodes to mid-stream: the table over
    a whole split therefore exceeds the corpus's text bytes by at most one byte per chunk (data.chunk_bytes,
    4,096 by default: under 0.03%); meta.json records both."""
    table = np.asarray(tokenizer.byte_lengths(), dtype=np.int32)
    if table.shape != (tokenizer.vocab_size,):
        raise ValueError(f"byte_lengths: expected {tokenizer.vocab_size} entries, got {table.shape}")
    return table


def load_tokenizer(spec: str):
    """`byte`, or a path to a SentencePiece .model file."""
    if spec == "byte":
        return ByteTokenizer()
    return SentencePieceTokenizer(spec)


def smallest_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
