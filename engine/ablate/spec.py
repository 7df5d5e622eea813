"""The `ablate` stage's config (STAGE_SPECS["ablate"] in engine.spec): a `scale` preset that fixes the
tokenizer, the baseline and parent shapes (the other arms' shapes are computed from the baseline,
engine/ablate/shapes.py), the token budget, the budget curve and the seeds, plus the few knobs worth
changing from a job file. Fields left unset take the scale's value."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from engine.fields import InputPath, OutputPath, Size
from engine.inherit.spec import DepthMethod, WidthMetric
from engine.paths import BUNDLED_CORPUS, FULL_CORPUS
from engine.spec import Strict
from engine.stages import Backend


@dataclass(frozen=True)
class Scale:
    corpus: str  # default sources
    large_vocab: int  # the BPE trained on the corpus (arm 1's tokenizer)
    base_layers: int  # arm 1: shallow and wide, tied embeddings
    base_width: int
    head_dim: int  # every shape's head size (heads are kept whole by inheritance)
    deep_layers: int  # arms 3-5: deeper and narrower at arm 1's parameters
    parent_layers: int  # arms 4-5 inherit from it (large vocabulary, same corpus)
    parent_width: int
    batch_size: int
    seq_len: int
    val_fraction: float  # held-out share of the corpus (chosen by chunk: the same text for both tokenizers)
    budget_steps: int  # the full budget: steps x batch_size x seq_len training tokens, the same for every arm
    parent_steps: int
    budgets: tuple[float, ...]  # the budget curve: fractions of budget_steps, the last one 1.0
    seeds: int  # seeds at the full budget
    curve_seeds: int  # seeds at the smaller budgets
    lr: float
    threads: int  # torch threads of each run
    workers: int  # runs at once (processes)
    compile: bool | Literal["auto"]  # every run's `compile` (engine/compiling.py)


SCALES: dict[str, Scale] = {
    # tests: about a minute on the 2-core machine
    "smoke": Scale(str(BUNDLED_CORPUS), 2048, base_layers=2, base_width=64, head_dim=16, deep_layers=4,
                   parent_layers=4, parent_width=128, batch_size=8, seq_len=64, val_fraction=0.05, budget_steps=24,
                   parent_steps=30, budgets=(0.5, 1.0), seeds=1, curve_seeds=1, lr=3e-3, threads=1,
                   workers=1, compile=False),
    # the committed result (docs/ablation/): at most 45 minutes on an idle 2-core machine. Compiled: 30 runs of
    # four shapes, and a worker process compiles a shape once (9-56 s measured; 0.03-0.08 s in its later runs);
    # bf16 compiled is 1.9x eager fp32 a step at these shapes alone on a Zen 4 (docs/train-speed.md session 9)
    "default": Scale(str(FULL_CORPUS), 2048, base_layers=4, base_width=64, head_dim=16, deep_layers=10,
                     parent_layers=10, parent_width=96, batch_size=8, seq_len=128, val_fraction=0.02,
                     budget_steps=3000, parent_steps=3000, budgets=(0.25, 0.5, 1.0), seeds=3, curve_seeds=1,
                     lr=6e-3, threads=1, workers=2, compile=True),
}


class AblateSpec(Strict):
    scale: Literal["smoke", "default"] = "default"
    sources: list[InputPath] | None = Field(None, min_length=1, description="the corpus every arm, the tokenizer "
                                                                           "and the parent train on; default: the "
                                                                           "scale's")
    seeds: PositiveInt | None = Field(None, description="training seeds of every arm at the full budget")
    curve_seeds: PositiveInt | None = Field(None, description="seeds at the budget curve's smaller budgets")
    budget_steps: Size | None = Field(None, description="every arm's steps at the full budget (equal "
                                                               "training tokens)")
    budgets: list[float] | None = Field(None, min_length=1, description="the budget curve: fractions of "
                                                                       "budget_steps, ascending, the last 1.0")
    parent_steps: Size | None = Field(None, description="training steps of the parent (arms 4-5)")
    compact_coverage: float = Field(0.98, gt=0, le=1, description="share of the large tokenizer's token "
                                                                  "occurrences the compact one keeps")
    inherit_depth: DepthMethod = Field("ends", description="which parent layers the child keeps (the paper's)")
    inherit_width: WidthMetric = Field("activation", description="which heads/neurons/channels it keeps")
    replay_rate: float = Field(0.5, gt=0, le=1, description="arm 5: share of arm 4's batches drawn for round 2")
    replay_temperature: float = Field(1.0, gt=0, description="arm 5: T of softmax(loss / T)")
    threads: PositiveInt | None = Field(None, description="torch threads of each run")
    workers: PositiveInt | None = Field(None, description="runs at once, each in its own process")
    backend: Backend = "cpu"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool | Literal["auto"] | None = Field(None, description="every run's compile setting; default: the "
                                                                    "scale's")
    export: bool = Field(True, description="export every arm's final model (full budget) as a Hugging Face directory")
    cache_dir: OutputPath | None = Field(None, description="tokenised shards, tokenizers and parents shared "
                                                           "across runs; default $TINYFORGE_HOME/datasets")

    @model_validator(mode="after")
    def _check(self):
        s = SCALES[self.scale]
        for name in ("seeds", "curve_seeds", "budget_steps", "parent_steps", "threads", "workers", "compile"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(s, name))
        if self.sources is None:
            self.sources = [s.corpus]
        if self.budgets is None:
            self.budgets = list(s.budgets)
        if self.budgets != sorted(self.budgets) or self.budgets[-1] != 1.0 or self.budgets[0] <= 0:
            raise ValueError(f"budgets: {self.budgets} must ascend within (0, 1] and end at 1.0 (the full budget)")
        if self.curve_seeds > self.seeds:
            raise ValueError(f"curve_seeds: {self.curve_seeds} is more than seeds={self.seeds}")
        return self

    @property
    def shape(self) -> Scale:
        return SCALES[self.scale]
