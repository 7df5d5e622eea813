"""Compact a SentencePiece model to the pieces a corpus uses, by editing its model proto (no
retraining): keep every unknown / control / user-defined / byte piece, then the most frequent
pieces until the target size. For BPE, a kept piece whose merges pass through a dropped piece could
never be produced again, so the pieces its merge trace needs are kept too (counted within the
target size); any kept piece that stays unreachable is reported. Ids keep their original order.

Writes MODEL, MODEL.id_map.json ({"old_to_new": [...]}, -1 for dropped) and MODEL.id_map.npy (the
same array), which parameter inheritance reads to keep the embedding and output rows."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.spm import proto as P

FIELD = "compact_vocab (--vocab)"


@dataclass
class Plan:
    keep: list[int]  # original ids kept, ascending
    must_keep: dict[str, int]  # kind -> number of pieces
    by_frequency: int  # kept for their own count
    for_merges: int  # kept only so that a longer kept piece stays producible (BPE): its characters and merges
    unreachable: list[str] = field(default_factory=list)  # kept pieces BPE can no longer produce
    unreachable_in_original: int = 0  # of those, already unreachable before compaction
    coverage: float = 1.0  # share of the counted tokens that are kept pieces

    @property
    def size(self) -> int:
        return len(self.keep)


class TraceCache(dict):
    """piece id -> ids of the intermediate pieces of its BPE merge trace in the original model
    (None: the original model cannot produce it either). Shared across sizes in a report."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.scores = P.merge_scores(m)
        self.id_of = {p.piece: i for i, p in enumerate(m.pieces)}

    def needs(self, i: int) -> list[int] | None:
        if i not in self:
            piece = self.m.pieces[i].piece
            final, merged = P.merge_trace(piece, self.scores)
            if final != [piece] and len(piece) > 1:
                self[i] = None
            else:  # its characters too: Hugging Face's BPE (unlike SentencePiece's) merges only pieces it knows
                chars = [self.id_of[c] for c in dict.fromkeys(piece) if c in self.id_of and c != piece]
                self[i] = chars + [self.id_of[p] for p in merged if p != piece]
        return self[i]


def plan(m, counts: np.ndarray, vocab_size: int, closure: bool = True, cache: TraceCache | None = None) -> Plan:
    n = len(m.pieces)
    counts = np.asarray(counts)
    if len(counts) != n:
        raise ValueError(f"counts: {len(counts)} entries, the model has {n} pieces")
    kinds = P.must_keep(m)
    n_must = sum(len(v) for v in kinds.values())
    detail = ", ".join(f"{len(v)} {k}" for k, v in kinds.items() if v)
    if vocab_size < n_must:
        raise ValueError(f"{FIELD}: {vocab_size} is smaller than the {n_must} pieces that must be kept ({detail})")
    bpe = closure and P.is_bpe(m)
    cache = cache if cache is not None else (TraceCache(m) if bpe else None)
    reason = {i: "must" for ids in kinds.values() for i in ids}
    candidates = [i for i, p in enumerate(m.pieces) if p.type == P.NORMAL]
    candidates.sort(key=lambda i: (-int(counts[i]), i))  # ties (and never-seen pieces): by score order
    for i in candidates:
        if len(reason) >= vocab_size:
            break
        if i in reason:
            reason[i] = "frequency"  # kept earlier for a merge, and frequent on its own
            continue
        need = [j for j in (cache.needs(i) or []) if j not in reason] if bpe else []
        if len(reason) + 1 + len(set(need)) > vocab_size:
            continue  # its merge path does not fit; a shorter piece may
        reason[i] = "frequency"
        for j in need:
            reason[j] = "merge"
    keep = sorted(reason)
    total = counts.sum()
    result = Plan(keep, {k: len(v) for k, v in kinds.items()},
                  by_frequency=sum(r == "frequency" for r in reason.values()),
                  for_merges=sum(r == "merge" for r in reason.values()),
                  coverage=float(counts[keep].sum() / total) if total else 1.0)
    if P.is_bpe(m):
        result.unreachable, result.unreachable_in_original = unreachable(m, keep, cache or TraceCache(m))
    return result


def unreachable(m, keep: list[int], cache: TraceCache) -> tuple[list[str], int]:
    """Kept normal pieces that BPE-encoding their own text with the kept vocabulary does not yield."""
    scores = P.merge_scores(m, set(keep))
    bad, in_original = [], 0
    for i in keep:
        piece = m.pieces[i]
        if piece.type != P.NORMAL or len(piece.piece) == 1:
            continue
        if P.merge_trace(piece.piece, scores)[0] != [piece.piece]:
            bad.append(piece.piece)
            in_original += cache.needs(i) is None
    return bad, in_original


def old_to_new(keep: list[int], n: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    out[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    return out


def id_map_paths(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("") if out.suffix == ".model" else out
    return stem.with_name(stem.name + ".id_map.json"), stem.with_name(stem.name + ".id_map.npy")


def write_id_map(mapping: np.ndarray, out: Path) -> tuple[Path, Path]:
    js, npy = id_map_paths(out)
    js.write_text(json.dumps({"old_to_new": mapping.tolist()}))
    np.save(npy, mapping)
    return js, npy


def compact_model(model: str | Path, counts: np.ndarray, vocab_size: int, out: str | Path, closure: bool = True,
                  log=print) -> dict:
    """Write the compact model, its id map and OUT.json (this summary); return the summary."""
    m = P.load_proto(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(m.pieces)
    if vocab_size >= n:
        msg = (f"{FIELD}: {vocab_size} >= the model's {n} pieces: nothing to remove (no-op); the model is copied "
               "unchanged with an identity id map")
        log(msg)
        if Path(model).resolve() != out.resolve():
            shutil.copyfile(model, out)
        js, npy = write_id_map(np.arange(n, dtype=np.int64), out)
        summary = {"noop": True, "message": msg, "original_vocab": n, "vocab": n, "coverage": 1.0}
    else:
        p = plan(m, counts, vocab_size, closure=closure)
        P.save_proto(P.subset(m, p.keep), out)
        js, npy = write_id_map(old_to_new(p.keep, n), out)
        summary = {"noop": False, "original_vocab": n, "vocab": p.size, "must_keep": p.must_keep,
                   "kept_by_frequency": p.by_frequency, "kept_for_merges": p.for_merges,
                   "coverage": round(p.coverage, 6), "unreachable": p.unreachable,
                   "unreachable_in_original": p.unreachable_in_original, "closure": closure}
        log(f"compacted {n:,} -> {p.size:,} pieces ({sum(p.must_keep.values())} must-keep, {p.by_frequency:,} by "
            f"frequency, {p.for_merges:,} for merges); coverage {p.coverage:.4%} of counted tokens; "
            f"{len(p.unreachable)} unreachable pieces")
    summary.update(model=str(out), id_map=str(js), id_map_npy=str(npy))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary
