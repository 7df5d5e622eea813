"""Shared by the tokenizer tests: small SentencePiece models trained once per test session on the
bundled sample corpus (under a second each), their token counts, and corpus text to check against."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from engine.paths import BUNDLED_CORPUS

SPECIAL = "<|im_start|>"
_ROOT = Path(tempfile.mkdtemp(prefix="tinyforge_tok_"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.lru_cache(maxsize=None)
def trained(model_type: str = "bpe", vocab_size: int = 4000, input_sentence_size: int = 0) -> Path:
    from engine.tokenizer.train import train_tokenizer

    out = _ROOT / f"{model_type}_{vocab_size}_{input_sentence_size}.model"
    return train_tokenizer([str(BUNDLED_CORPUS)], out, vocab_size, model_type, [SPECIAL],
                           input_sentence_size=input_sentence_size, log=lambda *a: None)


@functools.lru_cache(maxsize=None)
def counts(model: Path):
    from engine.tokenizer.count import count_text

    return count_text(model, [str(BUNDLED_CORPUS)], workers=2).counts


@functools.lru_cache(maxsize=None)
def compacted(model: Path, vocab_size: int, closure: bool = True) -> dict:
    from engine.tokenizer.compact import compact_model

    out = _ROOT / f"{model.stem}_to_{vocab_size}{'' if closure else '_noclosure'}.model"
    return compact_model(model, counts(model), vocab_size, out, closure=closure, log=lambda *a: None)


def corpus_texts() -> dict[str, str]:
    """Every file of the sample corpus, whole (English, Chinese, code; the files the data pipeline reads)."""
    from engine.tokenizer.corpus import corpus_files

    return {str(f.relative_to(BUNDLED_CORPUS)): f.read_text(encoding="utf-8")
            for f in corpus_files([str(BUNDLED_CORPUS)])}


def corpus_lines() -> list[str]:
    return [line for text in corpus_texts().values() for line in text.splitlines() if line]
