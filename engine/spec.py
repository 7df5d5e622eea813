"""Stage configurations: pydantic models that validate a job file (YAML or JSON).

Unknown keys and wrong types are rejected with the field's dotted path. Each stage kind's schema
is registered in STAGE_SPECS by import path so that the service can validate without importing
heavy modules."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Literal

import yaml
from engine.paths import BUNDLED_CORPUS
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

OpImpl = Literal["torch", "chunked", "triton", "liger", "npu"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    preset: str = "tiny"
    overrides: dict[str, int | float | bool] = Field(default_factory=dict,
                                                     description="ModelConfig fields replacing the preset's")


class DataSpec(Strict):
    sources: list[str] = Field(default_factory=lambda: [str(BUNDLED_CORPUS)], min_length=1)
    tokenizer: str = Field("byte", description="'byte' or a SentencePiece .model path")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    chunk_bytes: PositiveInt = 4096
    cache_dir: str | None = Field(None, description="where tokenised shards go; default $TINYFORGE_HOME/datasets")
    batch_ids: str | None = Field(None, description=".npy or JSON list of epoch-0 batch ids to train on "
                                                    "(multi-round replay); default: all batches in order")
    window_ids: str | None = Field(None, description=".npy or JSON list of training-split window ids to train on "
                                                     "(per-sequence multi-round replay)")
    probe_batches: int = Field(0, ge=0, description="forgetting probe: loss on this many batches from the first "
                                                    "tenth of the run's schedule, at every evaluation")


class OptimSpec(Strict):
    lr: PositiveFloat = 3e-3
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.03, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    lr_scaling_base_batch: PositiveInt | None = Field(
        None, description="if set, lr = lr x (global_batch / base)^0.5")


class ParallelSpec(Strict):
    strategy: Literal["none", "ddp", "zero1", "zero2", "zero3"] = Field(
        "ddp", description="data parallelism when the world size is above 1 (DeepSpeed ZeRO stages also at 1)")
    deepspeed_config: str | None = Field(None, description="raw DeepSpeed JSON merged over the generated one")


class InitSpec(Strict):
    checkpoint: str | None = Field(None, description="engine checkpoint directory (e.g. an inherited child)")
    hf_dir: str | None = Field(None, description="Hugging Face Llama directory")


class DistillSpec(Strict):
    """Optional: distil from a teacher (an inherited child's parent) while training (engine/inherit/distill.py)."""
    teacher: str | None = Field(None, description="teacher checkpoint or HF dir; unset = no distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="loss = (1 - alpha) x LM loss + alpha x T^2 x KL")
    temperature: PositiveFloat = 1.0
    id_map: str | None = Field(None, description="compact tokenizer's id map when the student's vocabulary is "
                                                 "a subset of the teacher's")


class NonfiniteSpec(Strict):
    """What training does when the loss is NaN or infinite (docs/engine-contract.md). Every occurrence is
    an event `nonfinite_loss` in events.jsonl and counted in result.json's summary."""
    policy: Literal["fail", "skip", "rollback"] = Field(
        "fail", description="fail: stop (exit 2); skip: drop that step's update and go on; rollback: reload "
                            "the last valid checkpoint and go on with the learning rate x lr_factor")
    lr_factor: float = Field(0.5, gt=0, le=1, description="rollback: learning-rate multiplier applied at each "
                                                          "rollback (kept in checkpoints, so a resume keeps it)")
    max_events: PositiveInt = Field(10, description="skip/rollback: the next non-finite loss after this many "
                                                    "stops the run as fail would")


class TrainSpec(Strict):
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    steps: PositiveInt = 200
    batch_size: PositiveInt = Field(16, description="global batch in sequences = micro_batch x accumulation x world")
    micro_batch: PositiveInt = 8
    seq_len: PositiveInt | None = Field(None, description="default: the model's block_size")
    seed: int = 1337
    backend: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    ops: dict[Literal["rms_norm", "rotary", "swiglu", "attention", "linear_cross_entropy", "adamw"], OpImpl] = \
        Field(default_factory=dict, description="per-operator implementation overrides")
    compile: bool = Field(False, description="torch.compile the model (applied from outside the model)")
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 100
    eval_batches: PositiveInt = 8
    checkpoint_every: PositiveInt = 100
    keep_checkpoints: PositiveInt = 3
    memory_limit_gb: PositiveFloat | None = Field(None, description="refuse configs whose estimate exceeds this")
    nonfinite: NonfiniteSpec = Field(default_factory=NonfiniteSpec)

    @model_validator(mode="after")
    def _check(self):
        if self.init.checkpoint and self.init.hf_dir:
            raise ValueError("init: give either checkpoint or hf_dir, not both")
        if self.data.batch_ids and self.data.window_ids:
            raise ValueError("data: give either batch_ids or window_ids, not both")
        if self.batch_size % self.micro_batch:
            raise ValueError(f"batch_size: {self.batch_size} is not a multiple of micro_batch={self.micro_batch}")
        if self.nonfinite.policy == "skip" and self.parallel.strategy.startswith("zero"):
            raise ValueError("nonfinite.policy: skip cannot drop an update under ZeRO (DeepSpeed steps inside "
                             "the backward pass); use rollback or fail")
        return self


STAGE_SPECS: dict[str, str] = {
    "train": "engine.spec:TrainSpec",
    "tokenizer": "engine.spm.spec:TokenizerStageSpec",
    "inherit": "engine.inherit.spec:InheritSpec",
    "rounds": "engine.rounds.spec:RoundsSpec",
    "eval": "engine.spec:EvalSpec",
    "export": "engine.spec:ExportSpec",
    "ablate": "engine.ablate.spec:AblateSpec",
}


class EvalSpec(Strict):
    checkpoint: str
    data: DataSpec = Field(default_factory=DataSpec)
    batches: PositiveInt = 16
    micro_batch: PositiveInt = 8
    backend: Literal["auto", "cpu", "cuda", "npu"] = "auto"


class ExportSpec(Strict):
    checkpoint: str
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class SpecError(ValueError):
    """A config that failed validation; str() lists each field path and problem."""


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        lines.append(f"{path or '(root)'}: {err['msg']}")
    return "; ".join(lines)


def stage_spec_class(kind: str):
    if kind not in STAGE_SPECS:
        raise SpecError(f"kind: unknown stage kind {kind!r}; known: {', '.join(STAGE_SPECS)}")
    module, attr = STAGE_SPECS[kind].split(":")
    return getattr(importlib.import_module(module), attr)


def read_config_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--config: {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"--config: {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"--config: {p} must hold a mapping at the top level")
    return data


def parse(kind: str, data: dict):
    cls = stage_spec_class(kind)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def load(kind: str, path: str | Path, overrides: list[str] = ()):
    """Read a config file, apply `a.b=value` overrides (YAML-typed), validate."""
    data = read_config_file(path) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--set: expected key=value, got {item!r}")
        node = data
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return parse(kind, data)
