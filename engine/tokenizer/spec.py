"""The tokenizer stage's config (STAGE_SPECS["tokenizer"] in engine.spec).

One stage, four actions:
- train:   train a SentencePiece model on `sources` (the stand-in large tokenizer);
- count:   token frequencies of `model` (or a freshly trained one) over `sources` or `shards`;
- compact: count, then keep the smallest vocabulary covering `compact_coverage` (default 0.98) of
           the large tokenizer's token occurrences, or exactly `compact_vocab` pieces (the default
           action: what the recipe runs);
- report:  coverage / tokens per byte / byte fallback / embedding share at `sizes`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from engine.fields import InputPath, Preset, Size
from engine.paths import BUNDLED_CORPUS
from engine.spec import Strict

DEFAULT_SIZES = (8000, 16000, 32000, 48000, 72000)
DEFAULT_PRESET = "pangu-pi-1b-pro"  # the paper's 1B model: where the embedding share matters
DEFAULT_COVERAGE = 0.98  # compact_coverage: the paper keeps 97.86% of the large tokenizer's token occurrences
WARN_COVERAGE = 0.95  # below this compaction is too deep: a `warning:` log line and a run-record event


class TokenizerStageSpec(Strict):
    action: Literal["train", "count", "compact", "report"] = "compact"
    sources: list[InputPath] = Field(default_factory=lambda: [str(BUNDLED_CORPUS)], min_length=1,
                               description="text files, folders or JSONL ({'text': ...} per line)")
    model: InputPath | None = Field(None, description="the large SentencePiece .model to count/compact/report; "
                                                "none: one is trained first from the train fields")
    # train
    vocab_size: Size = Field(32000, description="size of the large tokenizer trained when `model` is not given")
    model_type: Literal["bpe", "unigram"] = "bpe"
    special_tokens: list[str] = Field(default_factory=list, description="user-defined pieces, never split or dropped")
    character_coverage: float | None = Field(None, gt=0, le=1, description="default: 0.9995, lowered when the "
                                                                           "characters would crowd a small vocabulary")
    input_sentence_size: NonNegativeInt = Field(0, description="train on at most this many lines (0: all)")
    seed: int = 0
    # count
    counts: InputPath | None = Field(None, description="a frequency file (.npy or .tsv) from an earlier count")
    shards: list[InputPath] = Field(default_factory=list, description="count from token shards (.bin files or dataset "
                                                                "folders) instead of encoding `sources`")
    shard_dtype: Literal["uint16", "uint32"] | None = Field(None, description="default: from the folder's meta.json")
    workers: PositiveInt | None = Field(None, description="encoding processes (default: all cores)")
    chunk_bytes: PositiveInt = Field(4096, description="text is encoded in line-aligned chunks of this size, "
                                                       "as the data pipeline does")
    # compact
    compact_vocab: Size | None = Field(None, description="a fixed size: pieces the compact tokenizer keeps "
                                                               "(instead of compact_coverage)")
    compact_coverage: float | None = Field(DEFAULT_COVERAGE, gt=0, le=1,
                                           description="the smallest vocabulary keeping this share of the large "
                                                       "tokenizer's token occurrences on the corpus, merge closure "
                                                       "included (unused when compact_vocab is given)")
    closure: bool = Field(True, description="BPE: keep the pieces that kept pieces' merges pass through")
    # report
    sizes: list[Size] = Field(default_factory=lambda: list(DEFAULT_SIZES), min_length=1)
    preset: Preset = Field(DEFAULT_PRESET, description="model preset for the embedding + head parameter share")

    @model_validator(mode="after")
    def _check(self):
        from engine.config import PRESETS

        if self.compact_vocab is not None and self.compact_coverage is not None:
            if "compact_coverage" in self.model_fields_set:
                raise ValueError(f"compact_coverage: give either compact_vocab ({self.compact_vocab}, a fixed size) or "
                                 f"compact_coverage ({self.compact_coverage}, the smallest size reaching that share), "
                                 "not both")
            self.compact_coverage = None  # the fixed size decides (a dumped config reloads the same)
        if self.action == "compact" and self.compact_vocab is None and self.compact_coverage is None:
            raise ValueError("compact_coverage: give compact_coverage (e.g. 0.98) or compact_vocab")
        if self.action == "train":
            for name in ("model", "counts"):
                if getattr(self, name):
                    raise ValueError(f"{name}: not used when action is train (it trains a new model)")
            if self.shards:
                raise ValueError("shards: not used when action is train")
        if self.counts and self.shards:
            raise ValueError("shards: give either counts or shards, not both")
        if (self.counts or self.shards) and not self.model:
            raise ValueError(f"model: {'counts' if self.counts else 'shards'} belong to an existing model; give it")
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        return self
