"""Compact a SentencePiece model to the pieces a corpus uses, by editing its model proto (no
retraining): keep every unknown / control / user-defined / byte piece, then the most frequent
pieces until the target size: a fixed `compact_vocab`, or the smallest size whose kept pieces cover
`compact_coverage` of the large tokenizer's token occurrences on the corpus (merge closure included). For BPE, a kept piece whose merges pass through a dropped piece could
never be produced again, so the pieces its merge trace needs are kept too (counted within the
target size); any kept piece that stays unreachable is reported. Ids keep their original order.

Writes MODEL, MODEL.id_map.json ({"old_to_new": [...]}, -1 for dropped) and MODEL.id_map.npy (the
same array), which parameter inheritance reads to keep the embedding and output rows."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.tokenizer import proto as P
from engine.tokenizer.spec import DEFAULT_COVERAGE, WARN_COVERAGE  # noqa: F401 (DEFAULT_COVERAGE: for callers)

FIELD = "compact_vocab (--vocab)"
COVERAGE_FIELD = "compact_coverage (--coverage)"


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


def plan(m, counts: np.ndarray, vocab_size: int, closure: bool = True, cache: TraceCache | None = None,
         reachability: bool = True) -> Plan:
    """The pieces a `vocab_size` compaction keeps. reachability=False skips the (slower) check that
    every kept piece stays producible: what a search over sizes needs."""
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
    if reachability and P.is_bpe(m):
        result.unreachable, result.unreachable_in_original = unreachable(m, keep, cache or TraceCache(m))
    return result


def size_for_coverage(m, counts: np.ndarray, coverage: float, closure: bool = True,
                      cache: TraceCache | None = None) -> int:
    """The smallest vocabulary size whose plan() keeps at least `coverage` of the counted token
    occurrences, the pieces kept for BPE merges counted in the size and in the coverage. A binary
    search over sizes: plan(size) reaches the coverage and plan(size - 1) does not. The model's own
    size (nothing removed, coverage 1) when no smaller size reaches it."""
    if not 0 < coverage <= 1:
        raise ValueError(f"{COVERAGE_FIELD}: expected a share in (0, 1], got {coverage}")
    n = len(m.pieces)
    counts = np.asarray(counts)
    if len(counts) != n:
        raise ValueError(f"counts: {len(counts)} entries, the model has {n} pieces")
    n_must = sum(len(v) for v in P.must_keep(m).values())
    if closure and P.is_bpe(m) and cache is None:
        cache = TraceCache(m)

    def reaches(size: int) -> bool:
        return plan(m, counts, size, closure=closure, cache=cache, reachability=False).coverage >= coverage

    if reaches(n_must):
        return n_must
    lo, hi = n_must, n  # lo misses; hi (the whole model) reaches by definition
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


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


def compact_model(model: str | Path, counts: np.ndarray, vocab_size: int | None, out: str | Path,
                  closure: bool = True, log=print, coverage: float | None = None, sources: list[str] | None = None,
                  workers: int | None = None, chunk_bytes: int = 4096, large_bytes: int | None = None) -> dict:
    """Write the compact model, its id map and OUT.json (this summary); return the summary.

    The size: `vocab_size` (fixed), or with `coverage` the smallest size reaching that share of
    `counts` (exactly one of the two). With `sources`, the summary also holds what the compaction
    costs on that corpus (cost()); `large_bytes`: the UTF-8 bytes `counts` were counted over, when
    they come from encoding `sources` with `chunk_bytes` (the large model is then not encoded again).
    A coverage below WARN_COVERAGE is logged as a line starting `warning:` and listed in
    summary["warnings"]."""
    if (vocab_size is None) == (coverage is None):
        raise ValueError(f"{FIELD}, {COVERAGE_FIELD}: give exactly one of the two")
    m = P.load_proto(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(m.pieces)
    rule = {"size_rule": "coverage" if coverage is not None else "fixed", "compact_coverage": coverage,
            "compact_vocab": vocab_size}
    if coverage is not None:
        t0 = time.time()
        vocab_size = size_for_coverage(m, counts, coverage, closure=closure)
        log(f"{vocab_size:,} pieces: the smallest compaction of {n:,} keeping {coverage:.2%} of the counted tokens "
            f"(searched in {time.time() - t0:.2f}s)")
    if vocab_size >= n:
        what = (f"{COVERAGE_FIELD}: only the whole model ({n} pieces) keeps {coverage:.2%}" if rule["compact_coverage"]
                else f"{FIELD}: {vocab_size} >= the model's {n} pieces")
        msg = f"{what}: nothing to remove (no-op); the model is copied unchanged with an identity id map"
        log(msg)
        if Path(model).resolve() != out.resolve():
            shutil.copyfile(model, out)
        js, npy = write_id_map(np.arange(n, dtype=np.int64), out)
        summary = {"noop": True, "message": msg, "original_vocab": n, "vocab": n, "coverage": 1.0, **rule}
    else:
        p = plan(m, counts, vocab_size, closure=closure)
        P.save_proto(P.subset(m, p.keep), out)
        js, npy = write_id_map(old_to_new(p.keep, n), out)
        summary = {"noop": False, **rule, "original_vocab": n, "vocab": p.size, "must_keep": p.must_keep,
                   "kept_by_frequency": p.by_frequency, "kept_for_merges": p.for_merges,
                   "coverage": round(p.coverage, 6), "unreachable": p.unreachable,
                   "unreachable_in_original": p.unreachable_in_original, "closure": closure}
        log(f"compacted {n:,} -> {p.size:,} pieces ({sum(p.must_keep.values())} must-keep, {p.by_frequency:,} by "
            f"frequency, {p.for_merges:,} for merges); coverage {p.coverage:.4%} of counted tokens; "
            f"{len(p.unreachable)} unreachable pieces")
    if sources:
        summary.update(cost(model, counts, out, sources, workers=workers, chunk_bytes=chunk_bytes,
                            large_bytes=large_bytes))
        log(f"compact vs large on the corpus: {summary['tokens_per_byte']:.4f} vs {summary['tokens_per_byte_large']:.4f} "
            f"tokens per byte (x{summary['tokens_per_byte_cost']:.3f}); byte pieces {summary['byte_fallback_share']:.2%}"
            f" of the compact tokens ({summary['byte_fallback_share_large']:.2%} of the large tokenizer's)")
    summary["warnings"] = coverage_warnings(summary)
    for w in summary["warnings"]:
        log(w)
    summary.update(model=str(out), id_map=str(js), id_map_npy=str(npy))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def cost(large_model, large_counts: np.ndarray, compact_model_path, sources: list[str], workers: int | None = None,
         chunk_bytes: int = 4096, large_bytes: int | None = None) -> dict:
    """What compaction costs on `sources`: tokens per UTF-8 byte of the compact and the large model and
    their ratio (tokens_per_byte_cost, 1.25 = 25% more tokens for the same text), and the share of
    each model's tokens that are byte pieces <0xNN> (newlines are always <0x0A>: the trainer reads
    lines, so the large model's share is the floor)."""
    from engine.tokenizer.count import count_text

    def stats(model_path, counts, n_bytes):
        ids = P.byte_ids(P.load_proto(model_path))
        tokens = int(counts.sum())
        return tokens / max(n_bytes, 1), int(counts[ids].sum()) / max(tokens, 1)

    c = count_text(compact_model_path, sources, workers=workers, chunk_bytes=chunk_bytes)
    if large_bytes is None:
        big = count_text(large_model, sources, workers=workers, chunk_bytes=chunk_bytes)
        large_counts, large_bytes = big.counts, big.n_bytes
    tpb, share = stats(compact_model_path, c.counts, c.n_bytes)
    tpb_large, share_large = stats(large_model, np.asarray(large_counts), large_bytes)
    return {"tokens_per_byte": round(tpb, 6), "tokens_per_byte_large": round(tpb_large, 6),
            "tokens_per_byte_cost": round(tpb / tpb_large, 6) if tpb_large else None,
            "byte_fallback_share": round(share, 6), "byte_fallback_share_large": round(share_large, 6),
            "cost_bytes": c.n_bytes}


def coverage_warnings(summary: dict) -> list[str]:
    """A `warning:` line when the compact tokenizer keeps less than WARN_COVERAGE of the tokens."""
    cov = summary["coverage"]
    if cov >= WARN_COVERAGE:
        return []
    fix = ("raise compact_coverage" if summary.get("size_rule") == "coverage" else
           "raise compact_vocab, or drop it and let compact_coverage (default 0.98) choose the size")
    msg = (f"warning: the compact tokenizer ({summary['vocab']:,} of {summary['original_vocab']:,} pieces) keeps "
           f"{cov:.2%} of the large tokenizer's token occurrences, below {WARN_COVERAGE:.0%}")
    if "tokens_per_byte_cost" in summary:
        msg += (f": {summary['byte_fallback_share']:.1%} of its tokens are byte pieces and it needs "
                f"{summary['tokens_per_byte_cost'] - 1:+.1%} tokens per byte")
    return [f"{msg}; {fix}"]
