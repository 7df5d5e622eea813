"""The `ablate` stage's config (STAGE_SPECS["ablate"] in engine.spec): a `scale` preset that fixes the
tokenizer sizes, the arms' shapes (named presets in engine/config.py) and the budgets, plus the few
knobs worth changing from a job file. Fields left unset take the scale's value."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from engine.inherit.spec import DepthMethod, WidthMetric
from engine.paths import BUNDLED_CORPUS
from engine.spec import Strict


@dataclass(frozen=True)
class Scale:
    large_vocab: int  # the SentencePiece model trained on the corpus (arm 1's tokenizer)
    compact_vocab: int  # what compaction keeps of it (arms 2-5)
    base_preset: str  # arm 1: large vocabulary, shallow and wide
    wide_preset: str  # arm 2: compact vocabulary, same depth, widened to arm 1's parameters
    deep_preset: str  # arms 3-5: compact vocabulary, deeper and narrower at arm 1's parameters
    parent_preset: str  # arms 4-5 inherit from it (large vocabulary, trained on the same corpus)
    batch_size: int
    seq_len: int
    baseline_steps: int  # the compute budget: arm 1's steps x tokens per step x its FLOPs per token
    parent_steps: int
    seeds: int
    bytes_seeds: int
    lr: float


SCALES: dict[str, Scale] = {
    # tests: well under 90 s on the 2-core machine
    "smoke": Scale(2048, 1024, "ablate-smoke-base", "ablate-smoke-wide", "ablate-smoke-deep", "ablate-smoke-parent",
                   batch_size=8, seq_len=64, baseline_steps=30, parent_steps=40, seeds=1, bytes_seeds=1, lr=3e-3),
    # the committed result (docs/ablation/): about 20 minutes on an idle 2-core machine, one thread
    "default": Scale(8192, 4096, "ablate-base-8k", "ablate-wide-4k", "ablate-deep-4k", "ablate-parent-8k",
                     batch_size=16, seq_len=128, baseline_steps=150, parent_steps=180, seeds=2, bytes_seeds=2,
                     lr=3e-3),
}


class AblateSpec(Strict):
    scale: Literal["smoke", "default"] = "default"
    sources: list[str] = Field(default_factory=lambda: [str(BUNDLED_CORPUS)], min_length=1,
                               description="the corpus every arm, the tokenizer and the parent train on")
    seeds: PositiveInt | None = Field(None, description="training seeds of every arm (equal-compute runs)")
    bytes_seeds: NonNegativeInt | None = Field(None, description="seeds of the separate equal-bytes runs (0: none)")
    baseline_steps: PositiveInt | None = Field(None, description="arm 1's steps: sets the shared FLOPs budget")
    parent_steps: PositiveInt | None = Field(None, description="training steps of the parent (arms 4-5)")
    inherit_depth: DepthMethod = Field("ends", description="which parent layers the child keeps (the paper's)")
    inherit_width: WidthMetric = Field("activation", description="which heads/neurons/channels it keeps")
    round1_fraction: float = Field(2 / 3, gt=0, lt=1, description="arm 5: share of the budget's steps in round 1; "
                                                                 "the rest is the replay round")
    replay_rate: float = Field(0.5, gt=0, le=1, description="arm 5: share of round 1's batches drawn for round 2")
    replay_temperature: float = Field(1.0, gt=0, description="arm 5: T of softmax(loss / T)")
    threads: PositiveInt = Field(1, description="torch threads (1: tiny matmuls on a shared CPU run fastest)")
    backend: Literal["auto", "cpu", "cuda", "npu"] = "cpu"
    precision: Literal["bf16", "fp16", "fp32"] = "fp32"
    cache_dir: str | None = Field(None, description="tokenised shards; default $TINYFORGE_HOME/datasets")

    @model_validator(mode="after")
    def _check(self):
        s = SCALES[self.scale]
        for name in ("seeds", "bytes_seeds", "baseline_steps", "parent_steps"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(s, name))
        if self.bytes_seeds > self.seeds:
            raise ValueError(f"bytes_seeds: {self.bytes_seeds} is more than seeds={self.seeds} (the equal-bytes "
                             "view reuses the equal-compute runs of the same seeds)")
        return self

    @property
    def shape(self) -> Scale:
        return SCALES[self.scale]
