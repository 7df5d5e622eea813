"""Token counting and encoding throughput, in one run on the same tokenised corpus.

1. Counting. The corpus is tokenised once and stored both ways:
   - reference (the approach of the PanGu-pi Pro reference scripts): one JSON list of token ids per
     line in a .jsonl file per corpus file, counted into a Python dict, one process per file (a pool
     of all cores, one file per task), dicts merged at the end; also with collections.Counter.update;
   - tinyforge: flat little-endian uint16/uint32 .bin shards, np.memmap + np.bincount (one process).
   Prints tokens/s of both, the ratio (target >= 20x) and whether the counts are identical.
2. Encoding: engine.tokenizer.count.count_text with 1 process and with all cores (target: near-linear).

Usage: python bench/token_count.py [--corpus DIR ...] [--model M.model | --vocab 100000] [--repeat 3]
Default corpus: the repository's full corpus, data/corpus (14 MB of text, .xz per file, read as text;
engine.paths.FULL_CORPUS); --corpus data/sample for a quick run. Without --model, a BPE
model of --vocab pieces is trained on the corpus once and cached under $TINYFORGE_HOME/bench."""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np
import sentencepiece as spm

from engine.paths import FULL_CORPUS, state_home
from engine.tokenizer.corpus import batches, corpus_files, iter_chunks, text_size
from engine.tokenizer.count import count_shards, count_text
from engine.tokenizer.train import train_tokenizer


def tokenise_file(args) -> int:
    """One corpus file -> NAME.jsonl (a JSON list of ids per chunk) and NAME.bin (flat ids)."""
    model, src, out_dir, dtype = args
    sp = spm.SentencePieceProcessor(model_file=model)
    stem = Path(out_dir) / src.replace("/", "__")
    n = 0
    with open(f"{stem}.jsonl", "w") as js, open(f"{stem}.bin", "wb") as bin_:
        for batch in batches(iter_chunks([Path(src)]), 1 << 20):
            for ids in sp.encode(batch, num_threads=1):
                js.write(json.dumps(ids) + "\n")
                bin_.write(np.asarray(ids, dtype=dtype).tobytes())
                n += len(ids)
    return n


def reference_count_file(path: str) -> dict:
    counts: dict[int, int] = {}
    with open(path) as f:
        for line in f:
            for t in json.loads(line):
                counts[t] = counts.get(t, 0) + 1
    return counts


def reference_counter_file(path: str) -> Counter:
    counts: Counter = Counter()
    with open(path) as f:
        for line in f:
            counts.update(json.loads(line))
    return counts


def reference(files: list[str], fn, workers: int) -> dict:
    total: dict[int, int] = {}
    with mp.get_context("fork").Pool(workers) as pool:
        for d in pool.imap_unordered(fn, files):
            for k, v in d.items():
                total[k] = total.get(k, 0) + v
    return total


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: with busy cores, wall-time speedup reads
    low, while equal CPU-seconds at 1 and N processes show that parallelism adds no work."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", default=[str(FULL_CORPUS)])
    ap.add_argument("--model", default=None)
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = state_home() / "bench" / "token_count"
    work.mkdir(parents=True, exist_ok=True)
    files = corpus_files(args.corpus, "--corpus")
    size = sum(map(text_size, files))  # of text: .xz/.gz files count decompressed
    model = args.model
    if model is None:
        key = hashlib.sha1("\n".join(f"{f.resolve()}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:10]
        model = work / f"bpe_{args.vocab}_{key}.model"
        if not model.exists():
            train_tokenizer(args.corpus, model, args.vocab, log=lambda *a: None)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = sp.get_piece_size()
    dtype = "<u2" if vocab <= 1 << 16 else "<u4"
    shown = [os.path.relpath(c) if Path(c).resolve().is_relative_to(Path.cwd()) else c for c in args.corpus]
    print(f"corpus: {', '.join(shown)} ({len(files)} files, {size / 2**20:.1f} MiB of text); model: {Path(model).name} "
          f"({vocab:,} pieces); {cores} cores, load average {os.getloadavg()[0]:.1f} at start")

    tok_dir = work / "tokenised"
    tok_dir.mkdir(exist_ok=True)
    for old in tok_dir.iterdir():
        old.unlink()
    with mp.get_context("fork").Pool(cores) as pool:
        n_tokens = sum(pool.map(tokenise_file, [(str(model), str(f), str(tok_dir), dtype) for f in files]))
    jsonl = sorted(str(p) for p in tok_dir.glob("*.jsonl"))
    bins = sorted(str(p) for p in tok_dir.glob("*.bin"))
    print(f"tokenised once: {n_tokens:,} tokens -> {len(jsonl)} .jsonl token-list files and {len(bins)} "
          f"{np.dtype(dtype).name} .bin shards")

    t_ref, ref = best_of(lambda: reference(jsonl, reference_count_file, cores), args.repeat)
    t_ctr, ctr = best_of(lambda: reference(jsonl, reference_counter_file, cores), args.repeat)
    t_ours, ours = best_of(lambda: count_shards(bins, vocab, np.dtype(dtype).name), args.repeat)
    ref_arr = np.zeros(vocab, dtype=np.int64)
    ref_arr[list(ref)] = list(ref.values())
    same = bool((ref_arr == ours.counts).all()) and dict(ctr) == ref
    rows = [(f"reference: JSON lines -> dict, 1 process per file ({cores} at a time)", t_ref),
            (f"reference: JSON lines -> Counter.update, 1 process per file ({cores} at a time)", t_ctr),
            ("tinyforge: uint shards, memmap + bincount, 1 process", t_ours)]
    print(f"\ncount ({n_tokens:,} tokens, best of {args.repeat})")
    for name, t in rows:
        print(f"  {name:<78} {n_tokens / t / 1e6:9.1f} M tokens/s  ({t:.3f}s)")
    print(f"  ratio tinyforge / reference dict: {t_ref / t_ours:.1f}x   (target >= 20x)")
    print(f"  ratio tinyforge / reference Counter: {t_ctr / t_ours:.1f}x")
    print(f"  counts identical: {same}")

    print(f"\nencode (count_text over the corpus, chunks of 4096 bytes, best of {args.repeat})")
    base = None
    for w in sorted({1, cores}):
        cpu0 = cpu_seconds()
        t, c = best_of(lambda: count_text(model, args.corpus, workers=w), args.repeat)
        cpu = (cpu_seconds() - cpu0) / args.repeat
        base = base or t
        print(f"  {w} process{'es' if w > 1 else '  '}: {c.n_bytes / t / 2**20:6.2f} MiB/s  {c.tokens / t / 1e6:6.2f} "
              f"M tokens/s  ({t:.2f}s wall, {cpu:.2f} CPU-s per run)  speedup {base / t:.2f}x  "
              f"efficiency {base / t / w:.0%}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores: scaling reads low)")


if __name__ == "__main__":
    main()
