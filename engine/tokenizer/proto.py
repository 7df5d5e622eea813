"""The SentencePiece model proto (sentencepiece_model_pb2 from the `sentencepiece` package) and
what compaction needs from it: piece types, the pieces that must survive, and the BPE merge trace.

SentencePiece's BPE encoder starts from single characters and repeatedly merges the adjacent pair
whose concatenation is a piece with the highest score (leftmost on ties), whatever the vocabulary
was trained with. `merge_trace` replays that on a piece's own text, giving the intermediate pieces
its production passes through."""
from __future__ import annotations

import os
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MUST_KEEP_TYPES = {UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user-defined", BYTE: "byte"}
BPE, UNIGRAM = pb.TrainerSpec.BPE, pb.TrainerSpec.UNIGRAM


def load_proto(model) -> pb.ModelProto:
    """A .model path or serialized bytes."""
    m = pb.ModelProto()
    if isinstance(model, (bytes, bytearray)):
        m.ParseFromString(bytes(model))
        return m
    p = Path(model)
    if not p.is_file():
        raise FileNotFoundError(f"model: no SentencePiece model at {p}")
    try:
        m.ParseFromString(p.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"model: {p} is not a SentencePiece model ({exc})") from None
    if not m.pieces:
        raise ValueError(f"model: {p} is not a SentencePiece model (no pieces)")
    return m


def save_proto(m: pb.ModelProto, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(m.SerializeToString())
    os.replace(tmp, path)
    return path


def is_bpe(m: pb.ModelProto) -> bool:
    return m.trainer_spec.model_type == BPE


def must_keep(m: pb.ModelProto) -> dict[str, list[int]]:
    """Ids of the unknown, control, user-defined and byte pieces, by kind."""
    out: dict[str, list[int]] = {name: [] for name in MUST_KEEP_TYPES.values()}
    for i, p in enumerate(m.pieces):
        if p.type in MUST_KEEP_TYPES:
            out[MUST_KEEP_TYPES[p.type]].append(i)
    return out


def byte_ids(m: pb.ModelProto) -> list[int]:
    return [i for i, p in enumerate(m.pieces) if p.type == BYTE]


def merge_scores(m: pb.ModelProto, keep=None) -> dict[str, float]:
    """Pieces the BPE encoder may merge into (normal and unused; user-defined ones are matched
    whole before merging), restricted to `keep` ids when given."""
    return {p.piece: p.score for i, p in enumerate(m.pieces)
            if p.type in (NORMAL, UNUSED) and (keep is None or i in keep)}


def merge_trace(piece: str, scores: dict[str, float]) -> tuple[list[str], list[str]]:
    """(final symbols, pieces merged on the way) when BPE-encoding `piece`'s own text with `scores`."""
    symbols = list(piece)
    merged: list[str] = []
    while len(symbols) > 1:
        best, best_score = -1, None
        for i in range(len(symbols) - 1):
            s = scores.get(symbols[i] + symbols[i + 1])
            if s is not None and (best_score is None or s > best_score):
                best, best_score = i, s
        if best < 0:
            break
        symbols[best: best + 2] = [symbols[best] + symbols[best + 1]]
        merged.append(symbols[best])
    return symbols, merged


def subset(m: pb.ModelProto, keep_ids: list[int], vocab_size: int | None = None) -> pb.ModelProto:
    """A copy of `m` holding only `keep_ids` (in their original order, so scores stay sorted and
    the control pieces stay first) with the trainer spec's ids updated."""
    out = pb.ModelProto()
    out.CopyFrom(m)
    del out.pieces[:]
    new_id = {}
    for old in sorted(keep_ids):
        new_id[old] = len(out.pieces)
        out.pieces.append(m.pieces[old])
    ts = out.trainer_spec
    ts.vocab_size = vocab_size or len(out.pieces)
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(ts, field)
        if old >= 0:
            setattr(ts, field, new_id.get(old, -1))
    return out
