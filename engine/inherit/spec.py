"""The `inherit` stage's config: which parent, what child shape, how to choose layers and widths,
which calibration data, and (for a compact tokenizer) which vocabulary rows to keep."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, model_validator

from engine.fields import InputPath, OutputPath, Preset, Size, TokenizerPath
from engine.paths import BUNDLED_CORPUS
from engine.spec import Strict
from engine.stages import Backend

DepthMethod = Literal["uniform", "first", "last", "ends", "explicit", "block_influence", "loss_rise"]
WidthMetric = Literal["random", "l1", "l2", "taylor", "activation", "learnable"]
CHILD_SHAPE_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "ffn_hidden")


class ChildSpec(Strict):
    """The child's shape: a preset, a model-config file, and/or explicit fields (these win). Fields
    left unset are the parent's; head_dim is always the parent's (heads are kept whole)."""
    preset: Preset | None = None
    config: InputPath | None = Field(None, description="JSON/YAML file of ModelConfig fields")
    vocab_size: Size | None = None
    n_layer: Size | None = None
    n_embd: Size | None = None
    n_head: Size | None = None
    n_kv_head: Size | None = None
    ffn_hidden: Size | None = None
    tie_embeddings: bool | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if self.preset and self.config:
            raise ValueError("child: give either preset or config, not both")
        return self


class DepthSpec(Strict):
    method: DepthMethod = "ends"
    layers: list[NonNegativeInt] | None = Field(None, description="parent layer ids kept (method explicit)")
    first: NonNegativeInt | None = Field(None, description="ends: layers kept from the start "
                                                           "(default: half of the child's, rounded up)")

    @model_validator(mode="after")
    def _explicit(self):
        if self.method == "explicit" and not self.layers:
            raise ValueError("depth.layers: method 'explicit' needs the list of parent layers to keep")
        if self.layers and self.method != "explicit":
            raise ValueError(f"depth.layers: only used with method 'explicit', not {self.method!r}")
        return self


class LearnableSpec(Strict):
    """Hard-concrete gates (Louizos et al. 2018, as in Sheared-LLaMA) trained against the LM loss
    with a Lagrangian pulling each structure's expected sparsity to its target."""
    steps: Size = 300
    ramp_frac: float = Field(0.5, ge=0, le=1, description="target sparsity ramps linearly over this share of steps")
    lr: PositiveFloat = Field(0.1, description="learning rate of the gates' log-alpha")
    lagrangian_lr: PositiveFloat = Field(0.1, description="learning rate of the Lagrange multipliers (ascent)")
    temperature: PositiveFloat = 2 / 3
    init_keep: float = Field(0.9, gt=0, lt=1, description="initial keep probability of every gate")
    fold: bool = Field(True, description="fold the kept gates' soft values into the weights (Sheared-LLaMA); false: "
                                         "the gates only rank, the child keeps the parent's weights unscaled")


class CalibSpec(Strict):
    sources: list[InputPath] = Field(default_factory=lambda: [str(BUNDLED_CORPUS)], min_length=1)
    tokenizer: TokenizerPath | None = Field(None, description="the parent's tokenizer; default: from the parent, "
                                                              "else 'byte'")
    batches: Size = Field(8, description="calibration batches for data-driven scores")
    micro_batch: Size = 4
    seq_len: Size = 128
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    chunk_bytes: Size = 4096
    cache_dir: OutputPath | None = None


class VocabSpec(Strict):
    id_map: InputPath | None = Field(None, description="compact tokenizer's id map: JSON list / .npy array of "
                                                       "parent ids in child-id order, or a JSON object {parent id: "
                                                       "child id}; default: MODEL.id_map.json beside vocab.tokenizer")
    tokenizer: TokenizerPath | None = Field(None, description="the child's tokenizer (held-out loss, recorded in "
                                                              "the checkpoint)")


class InheritSpec(Strict):
    parent: InputPath = Field(description="engine checkpoint (step dir, checkpoints root or run dir) or HF Llama dir")
    child: ChildSpec = Field(default_factory=ChildSpec)
    depth: DepthSpec = Field(default_factory=DepthSpec)
    width: WidthMetric = "l2"
    learnable: LearnableSpec = Field(default_factory=LearnableSpec)
    calib: CalibSpec = Field(default_factory=CalibSpec)
    vocab: VocabSpec = Field(default_factory=VocabSpec)
    eval_batches: NonNegativeInt = Field(8, description="held-out batches for the child-vs-random loss (0: skip)")
    seed: int = 0
    backend: Backend = "auto"
