"""What a compact vocabulary costs and saves, by size: corpus coverage by token count, tokens per
byte, the fraction of text that falls back to bytes, and the embedding + output-head share of a
model preset's parameters. A table (JSON + Markdown) and a PNG."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from engine.tokenizer import proto as P
from engine.tokenizer.compact import TraceCache, plan
from engine.tokenizer.count import count_text
from engine.tokenizer.spec import DEFAULT_PRESET, DEFAULT_SIZES


def parse_sizes(text: str) -> list[int]:
    """'8k,16k,32000' -> [8000, 16000, 32000]."""
    out = []
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kK]?)", item)
        if not m:
            raise ValueError(f"sizes: {item!r} is not a size like 8000 or 8k")
        out.append(int(float(m.group(1)) * (1000 if m.group(2) else 1)))
    if not out:
        raise ValueError("sizes: no sizes given")
    return out


def embedding_share(preset: str, vocab_size: int) -> float:
    from dataclasses import replace

    from engine.arch import count_params
    from engine.config import model_config

    # replace(): presets with a fixed vocabulary (the paper's) take this size too
    return count_params(replace(model_config(preset, vocab_size=vocab_size), vocab_size=vocab_size)).embedding_share


def measure(model_bytes: bytes, sources, workers) -> dict:
    """Encode the corpus with one model: tokens per byte, and the fraction of the text's bytes (newlines
    aside) that come out as byte pieces."""
    m = P.load_proto(model_bytes)
    c = count_text(model_bytes, sources, workers=workers)
    ids = P.byte_ids(m)
    newline = sum(int(c.counts[i]) for i in ids if m.pieces[i].piece == "<0x0A>")
    fallback = int(c.counts[ids].sum()) - newline  # newline is always <0x0A>: the trainer reads lines
    return {"tokens": c.tokens, "bytes": c.n_bytes, "tokens_per_byte": c.tokens / max(c.n_bytes, 1),
            "byte_fallback": fallback / max(c.n_bytes - newline, 1), "encode_s": round(c.seconds, 2)}


def vocab_report(model: str | Path, sources: list[str], out_dir: str | Path, sizes=DEFAULT_SIZES,
                 preset: str = DEFAULT_PRESET, counts: np.ndarray | None = None, workers: int | None = None,
                 log=print) -> dict:
    m = P.load_proto(model)
    n = len(m.pieces)
    embedding_share(preset, n)  # an unknown preset fails before any work
    if counts is None:
        log(f"counting tokens of {model} over {', '.join(map(str, sources))} ...")
        counts = count_text(model, sources, workers=workers).counts
    skipped = sorted(s for s in set(sizes) if s >= n)
    cache = TraceCache(m) if P.is_bpe(m) else None
    rows = []
    for size in [*sorted(s for s in set(sizes) if s < n), n]:
        if size < n:
            p = plan(m, counts, size, cache=cache)
            proto, coverage, for_merges, unreachable = (P.subset(m, p.keep).SerializeToString(), p.coverage,
                                                        p.for_merges, len(p.unreachable))
        else:
            proto, coverage, for_merges, unreachable = m.SerializeToString(), 1.0, 0, 0
        row = {"vocab": size, "original": size == n, "coverage": coverage, **measure(proto, sources, workers),
               "embedding_share": embedding_share(preset, size), "kept_for_merges": for_merges,
               "unreachable": unreachable}
        rows.append(row)
        log(f"  {size:>7,}: coverage {coverage:.4f}  tokens/byte {row['tokens_per_byte']:.4f}  "
            f"byte fallback {row['byte_fallback']:.4f}  emb+head {row['embedding_share']:.3f}")
    report = {"model": str(model), "sources": [str(s) for s in sources], "preset": preset, "original_vocab": n,
              "counted_tokens": int(counts.sum()), "skipped_sizes": skipped, "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")
    return report


def markdown(r: dict) -> str:
    lines = [f"Compact vocabularies of `{Path(r['model']).name}` ({r['original_vocab']:,} pieces) on "
             f"{', '.join(Path(s).name for s in r['sources'])}; embedding + head share for preset `{r['preset']}`.", "",
             "| vocab | coverage (token count) | tokens / byte | byte-fallback fraction | emb+head share "
             "| kept for merges |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["rows"]:
        name = f"{row['vocab']:,}" + (" (original)" if row["original"] else "")
        lines.append(f"| {name} | {row['coverage']:.2%} | {row['tokens_per_byte']:.4f} | {row['byte_fallback']:.4f} "
                     f"| {row['embedding_share']:.1%} | {row['kept_for_merges']:,} |")
    if r["skipped_sizes"]:
        lines += ["", f"Not below the original size, skipped: {', '.join(f'{s:,}' for s in r['skipped_sizes'])}."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> Path:
    from engine.plots import plt, save

    rows = r["rows"]
    x = [row["vocab"] for row in rows]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    panels = [("coverage", "coverage by token count"), ("tokens_per_byte", "tokens per byte"),
              ("byte_fallback", "byte-fallback fraction of bytes (newlines aside)"),
              ("embedding_share", f"embedding + head share ({r['preset']})")]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(x, [row[key] for row in rows], "o-")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("vocabulary size")
    fig.suptitle(f"compacting {Path(r['model']).name} ({r['original_vocab']:,} pieces)")
    return save(fig, path)
