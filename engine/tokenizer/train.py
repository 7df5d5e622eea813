"""Train a SentencePiece model: the stand-in "large tokenizer" when a user brings none.

Llama-style settings so that the model round-trips any text and loads as a Hugging Face Llama
tokenizer: byte fallback (no <unk> output for unseen characters), identity normalisation and kept
whitespace (decode(encode(text)) == text), digits split, <unk>=0 <s>=1 </s>=2, no <pad>.
User-defined special tokens are matched in raw text and always kept whole."""
from __future__ import annotations

import io
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from engine.tokenizer.corpus import corpus_files, iter_sentences


DEFAULT_COVERAGE = 0.9995
N_CONTROL = 3  # <unk>, <s>, </s>
N_BYTES = 256


def auto_coverage(sentences, vocab_size: int, n_meta: int) -> float:
    """DEFAULT_COVERAGE, unless the characters it needs would take more than half of the vocabulary
    left after the meta pieces; then the coverage of the most frequent characters that fit (the
    rest falls back to bytes)."""
    chars = Counter()
    for s in sentences:
        chars.update(s)
    total = sum(chars.values())
    if not total:
        return DEFAULT_COVERAGE
    budget = max((vocab_size - n_meta) // 2, 1)
    covered = 0
    for i, (_, n) in enumerate(chars.most_common()):
        covered += n
        if covered / total >= DEFAULT_COVERAGE:
            return DEFAULT_COVERAGE
        if i + 1 >= budget:
            return max(covered / total - 1e-6, 0.5)
    return DEFAULT_COVERAGE


def check_special_tokens(special_tokens: list[str]) -> list[str]:
    seen = set()
    for t in special_tokens:
        if not t or t.strip() != t:
            raise ValueError(f"special_tokens: {t!r} is empty or has surrounding whitespace")
        if t in ("<unk>", "<s>", "</s>"):
            raise ValueError(f"special_tokens: {t!r} is already a built-in control piece")
        if t in seen:
            raise ValueError(f"special_tokens: {t!r} is listed twice")
        seen.add(t)
    return list(special_tokens)


def train_tokenizer(sources: list[str], out: str | Path, vocab_size: int,
                    model_type: Literal["bpe", "unigram"] = "bpe", special_tokens: list[str] = (),
                    character_coverage: float | None = None, input_sentence_size: int = 0,
                    max_sentence_length: int = 16384, seed: int = 0, num_threads: int | None = None,
                    log=print) -> Path:
    """Train on the text files/folders/JSONL in `sources`; write the .model file to `out`."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type: expected 'bpe' or 'unigram', got {model_type!r}")
    specials = check_special_tokens(list(special_tokens))
    n_meta = N_CONTROL + N_BYTES + len(specials)
    if vocab_size <= n_meta:
        raise ValueError(f"vocab_size: {vocab_size} leaves no room beyond the {n_meta} control, byte and special "
                         "pieces")
    files = corpus_files(sources)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def sentences():
        for n, s in enumerate(iter_sentences(files)):
            if input_sentence_size and n >= input_sentence_size:
                return
            yield s

    if character_coverage is None:
        character_coverage = auto_coverage(sentences(), vocab_size, n_meta)
    log(f"training a {vocab_size:,}-piece SentencePiece {model_type} model on {len(files)} files "
        f"(character coverage {character_coverage:.4f}) ...")
    t0 = time.time()
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=buf, model_type=model_type, vocab_size=vocab_size,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=specials, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=character_coverage, max_sentence_length=max_sentence_length,
            num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as exc:
        raise ValueError(_explain(str(exc), vocab_size, character_coverage)) from None
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    log(f"trained {out} in {time.time() - t0:.1f}s")
    return out


def _explain(message: str, vocab_size: int, coverage: float) -> str:
    """The trainer's internal errors, as a message naming the field to change."""
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
    if m:
        return (f"vocab_size: {vocab_size} is smaller than the {m.group(2)} characters and meta pieces needed at "
                f"character_coverage={coverage}; raise vocab_size or lower character_coverage")
    m = re.search(r"Vocabulary size is too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if m:
        return f"vocab_size: {vocab_size} is more than this corpus supports (at most {m.group(2)}); use more text"
    if "No valid sentence" in message or "Input corpus" in message or "0 sentences" in message:
        return f"sources: no usable text to train on ({message.strip().splitlines()[-1]})"
    return f"sources: SentencePiece training failed: {message.strip().splitlines()[-1]}"
