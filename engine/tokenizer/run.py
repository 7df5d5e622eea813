"""The tokenizer stage (docs/engine-contract.md): run.json at start, result.json with artifacts
at the end. Artifact names the recipe wires: `tokenizer` (the compact model, or the trained one for
action train), `id_map`, `large_tokenizer`."""
from __future__ import annotations

import time
from pathlib import Path

from engine.run_record import RunRecord
from engine.tokenizer.spec import TokenizerStageSpec

PHASES = {"train": ["train"], "count": ["train", "count"], "compact": ["train", "count", "compact"],
          "report": ["train", "count", "report"]}


def _art(name: str, path, type_: str) -> dict:
    return {"name": name, "path": str(path), "type": type_}


def _progress_logger(log):
    def progress(done: int, total: int, elapsed: float):
        rate = done / max(elapsed, 1e-9)
        eta = (total - done) / rate if rate else float("nan")
        log(f"  encoded {done / 2**20:,.1f} / {total / 2**20:,.1f} MiB ({rate / 2**20:.2f} MiB/s, eta {eta:.0f}s)")
    return progress


def run_stage(spec: TokenizerStageSpec, out_dir: str | Path, log=print) -> dict:
    from engine.tokenizer import count as C
    from engine.tokenizer.compact import compact_model
    from engine.tokenizer.proto import load_proto
    from engine.tokenizer.report import vocab_report
    from engine.tokenizer.train import train_tokenizer

    out = Path(out_dir)
    rec = RunRecord(out)
    rec.start("tokenizer", spec.model_dump(), backend={"backend": "cpu", "device": "cpu", "precision": None,
                                                        "ops": {}}, world_size=1)
    phases = [p for p in PHASES[spec.action] if not (p == "train" and spec.model)]
    step = iter(range(len(phases)))

    def phase(name):
        rec.progress(next(step), len(phases), None, name)
        rec.event("phase", name)

    t0 = time.time()
    artifacts, summary = [], {"action": spec.action}
    inputs = [*spec.sources, *([spec.model] if spec.model else []), *([spec.counts] if spec.counts else []),
              *spec.shards]
    if spec.model:
        large = Path(spec.model)
        load_proto(large)  # a bad model path fails before any work
    else:
        phase("train")
        large = train_tokenizer(spec.sources, out / "large.model", spec.vocab_size, spec.model_type,
                                spec.special_tokens, spec.character_coverage, spec.input_sentence_size,
                                seed=spec.seed, log=log)
    if spec.action == "train":
        artifacts.append(_art("tokenizer", large, "tokenizer"))
    else:
        artifacts.append(_art("large_tokenizer", large, "tokenizer"))
        m = load_proto(large)
        pieces = [p.piece for p in m.pieces]
        phase("count")
        large_bytes = None  # the bytes the counts were taken over, when they come from encoding `sources`
        if spec.counts:
            counts = C.load_counts(spec.counts, len(pieces))
        else:
            if spec.shards:
                c = C.count_shards(spec.shards, len(pieces), spec.shard_dtype)
                log(f"counted {c.tokens:,} tokens from shards in {c.seconds:.2f}s")
            else:
                c = C.count_text(large, spec.sources, spec.workers, spec.chunk_bytes,
                                 progress=_progress_logger(log))
                log(f"counted {c.tokens:,} tokens in {c.n_bytes:,} bytes in {c.seconds:.2f}s "
                    f"({c.n_bytes / max(c.seconds, 1e-9) / 2**20:.2f} MiB/s)")
            counts = c.counts
            large_bytes = None if spec.shards else c.n_bytes  # counted by encoding `sources`: reused for the cost
            npy, tsv = C.save_counts(counts, out / "counts", pieces)
            artifacts += [_art("counts", npy, "data"), _art("counts_tsv", tsv, "data")]
            summary.update(tokens=c.tokens, bytes=c.n_bytes, count_s=round(c.seconds, 3))
        summary.update(distinct_tokens=int((counts > 0).sum()), original_vocab=len(pieces))
        if spec.action == "compact":
            phase("compact")
            s = compact_model(large, counts, spec.compact_vocab, out / "compact.model", closure=spec.closure, log=log,
                              coverage=spec.compact_coverage, sources=spec.sources, workers=spec.workers,
                              chunk_bytes=spec.chunk_bytes, large_bytes=large_bytes)
            for w in s["warnings"]:
                rec.event("warning", w, coverage=s["coverage"], vocab=s["vocab"])
            artifacts = [_art("tokenizer", s["model"], "tokenizer"), _art("id_map", s["id_map"], "data"),
                         _art("id_map_npy", s["id_map_npy"], "data"), *artifacts,
                         _art("compact_summary", out / "compact.json", "report")]
            summary.update({k: v for k, v in s.items() if k not in ("model", "id_map", "id_map_npy")},
                           unreachable=len(s.get("unreachable", [])))
        elif spec.action == "report":
            phase("report")
            r = vocab_report(large, spec.sources, out, spec.sizes, spec.preset, counts=counts, workers=spec.workers,
                             log=log)
            artifacts += [_art("report", out / "report.json", "report"), _art("report_md", out / "report.md", "report"),
                          _art("plot", out / "report.png", "plot")]
            summary.update(rows=r["rows"], skipped_sizes=r["skipped_sizes"])
    summary["seconds"] = round(time.time() - t0, 2)
    rec.progress(len(phases), len(phases), 0, "done")
    return rec.result("tokenizer", summary, artifacts, inputs)
