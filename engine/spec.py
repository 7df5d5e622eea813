"""Stage configurations: pydantic models that validate a job file (YAML or JSON).

Unknown keys and wrong types are rejected with the field's dotted path. Each stage kind's schema
is registered in STAGE_SPECS by import path so that the service can validate without importing
heavy modules."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from engine import stages
from engine.config import SIZE_FIELDS
from engine.fields import InputPath, OutputPath, Preset, Size, TokenizerPath, sizes_at
from engine.paths import BUNDLED_CORPUS
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

OpImpl = Literal["torch", "chunked", "cpu", "triton", "liger", "npu"]
MEMORY_LIMIT_ENV = "TINYFORGE_MEMORY_LIMIT_GB"
COUNTER_MAX = 2**63 - 1  # token and FLOP counters are int64 in numpy/torch
# fp16 needs dynamic loss scaling on every path, and the chunked loss keeps its logit gradient (values
# around 1/(tokens x vocab), e.g. 4e-9) in the logits' dtype, where fp16 flushes it to zero. Neither is
# implemented, so fp16 is refused rather than silently training on zero gradients.
FP16_REFUSED = ("precision: fp16 is not supported (no loss scaling, and the fused loss's logit gradient "
                "underflows in fp16); use bf16, or fp32 where the device has no bf16 (auto chooses)")


def plan_memory_limit() -> tuple[float, str]:
    """(bytes, where it came from) a training job may plan for when its memory_limit_gb is unset:
    $TINYFORGE_MEMORY_LIMIT_GB, else the RAM of the machine that validates. The validating machine need
    not be the worker (a service in front of GPU workers): set the variable there to the largest worker's
    memory. The worker checks again at start against its device's free memory (engine/train.py)."""
    if os.environ.get(MEMORY_LIMIT_ENV):
        return float(os.environ[MEMORY_LIMIT_ENV]) * 2**30, f"{MEMORY_LIMIT_ENV}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory_limit_gb unset: this machine's RAM"


def field_error(model: str, field: str, value, message: str) -> ValidationError:
    """A validation error located at `field` (a model validator's own errors would sit at the root)."""
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError("size_limit", message), loc=(field,), input=value)])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    preset: Preset = "tiny"
    overrides: Annotated[dict[str, int | float | bool], sizes_at(*SIZE_FIELDS)] = Field(
        default_factory=dict, description="ModelConfig fields replacing the preset's")


class DataSpec(Strict):
    sources: list[InputPath] = Field(default_factory=lambda: [str(BUNDLED_CORPUS)], min_length=1)
    tokenizer: TokenizerPath = Field("byte", description="'byte' or a SentencePiece .model path")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    chunk_bytes: Size = 4096
    cache_dir: OutputPath | None = Field(None, description="where tokenised shards go; default "
                                                           "$TINYFORGE_HOME/datasets")
    batch_ids: InputPath | None = Field(None, description=".npy or JSON list of epoch-0 batch ids to train on "
                                                          "(multi-round replay); default: all batches in order")
    window_ids: InputPath | None = Field(None, description=".npy or JSON list of training-split window ids to "
                                                           "train on (per-sequence multi-round replay)")
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
    lr_scaling_base_batch: Size | None = Field(
        None, description="if set, lr = lr x (global_batch / base)^0.5")
    schedule_steps: Size | None = Field(
        None, description="length of the warmup + cosine schedule in steps of the whole run, counted from the start "
                          "of the run this one continues (init.continue_run); past it the learning rate stays at its "
                          "floor. Default: this run's own end, or, when continuing, the schedule the checkpoint recorded")


class ParallelSpec(Strict):
    strategy: Literal["none", "ddp", "zero1", "zero2", "zero3"] = Field(
        "ddp", description="data parallelism when the world size is above 1 (DeepSpeed ZeRO stages also at 1)")
    deepspeed_config: InputPath | None = Field(None, description="raw DeepSpeed JSON merged over the generated one")


class InitSpec(Strict):
    checkpoint: InputPath | None = Field(None, description="engine checkpoint directory (e.g. an inherited child)")
    hf_dir: InputPath | None = Field(None, description="Hugging Face Llama directory")
    weights: Literal["load", "random"] = Field(
        "load", description="random: take only the shape (model config) from init.checkpoint or hf_dir and start "
                            "from a random initialisation: a from-scratch control of the same shape")
    continue_run: bool = Field(False, description="continue the run that wrote init.checkpoint: load its AdamW "
                                                  "moments too, count steps on from its step and follow its "
                                                  "learning-rate schedule (multi-round training as one run)")


class DistillSpec(Strict):
    """Optional: distil from a teacher (an inherited child's parent) while training (engine/inherit/distill.py)."""
    teacher: InputPath | None = Field(None, description="teacher checkpoint or HF dir; unset = no distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="loss = (1 - alpha) x LM loss + alpha x T^2 x KL")
    temperature: PositiveFloat = 1.0
    id_map: InputPath | None = Field(None, description="compact tokenizer's id map when the student's "
                                                       "vocabulary is a subset of the teacher's")


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
    steps: Size = 200
    batch_size: Size = Field(16, description="global batch in sequences = micro_batch x accumulation x world")
    micro_batch: Size = 8
    seq_len: Size | None = Field(None, description="default: the model's block_size")
    seed: int = 1337
    backend: stages.Backend = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the device computes it natively, else fp32 on a CPU (engine/backend.py)")
    ops: dict[Literal["rms_norm", "rotary", "swiglu", "attention", "linear_cross_entropy", "adamw"], OpImpl] = \
        Field(default_factory=dict, description="per-operator implementation overrides")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the training forward (from outside the model); auto: when the estimated "
                            "run repays the compile time (engine/compiling.py)")
    deterministic: bool = Field(False, description="deterministic kernels (torch.use_deterministic_algorithms, "
                                                   "math attention, CUBLAS_WORKSPACE_CONFIG): resume is bit-identical "
                                                   "on a GPU too, at some speed; off, a GPU resume matches to a tolerance")
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 100
    eval_batches: Size = 8
    checkpoint_every: PositiveInt = 100
    keep_checkpoints: PositiveInt = 3
    memory_limit_gb: PositiveFloat | None = Field(None, description="refuse configs whose estimate exceeds this")
    nonfinite: NonfiniteSpec = Field(default_factory=NonfiniteSpec)

    @model_validator(mode="after")
    def _check(self):
        if self.precision == "fp16":
            raise ValueError(FP16_REFUSED)
        if self.init.checkpoint and self.init.hf_dir:
            raise ValueError("init: give either checkpoint or hf_dir, not both")
        if self.init.continue_run and not self.init.checkpoint:
            raise ValueError("init.continue_run: needs init.checkpoint (the run to continue)")
        if self.init.continue_run and self.init.weights == "random":
            raise ValueError("init.weights: 'random' starts afresh; it cannot continue a run (init.continue_run)")
        if self.init.weights == "random" and not (self.init.checkpoint or self.init.hf_dir):
            raise ValueError("init.weights: 'random' takes the shape from init.checkpoint or init.hf_dir; give one")
        if self.data.batch_ids and self.data.window_ids:
            raise ValueError("data: give either batch_ids or window_ids, not both")
        if self.batch_size % self.micro_batch:
            raise ValueError(f"batch_size: {self.batch_size} is not a multiple of micro_batch={self.micro_batch}")
        if self.nonfinite.policy == "skip" and self.parallel.strategy.startswith("zero"):
            raise ValueError("nonfinite.policy: skip cannot drop an update under ZeRO (DeepSpeed steps inside "
                             "the backward pass); use rollback or fail")
        self._check_sizes()
        return self

    def _planned_model(self):
        """The model config this job will train, as far as validation can know it without loading files;
        the vocabulary of a SentencePiece tokenizer counts as its smallest (the estimates are lower bounds)."""
        from engine.config import model_config, padded_vocab
        try:
            if self.init.checkpoint:
                from engine.config import ModelConfig
                manifest = json.loads((Path(self.init.checkpoint) / "manifest.json").read_text())
                return ModelConfig.from_dict(manifest["model_config"])
            if self.init.hf_dir:
                return None
            vocab = 1
            if self.data.tokenizer == "byte":
                from engine.tokenizer.load import ByteTokenizer
                vocab = ByteTokenizer().vocab_size
            return model_config(self.model.preset, vocab_size=padded_vocab(vocab), **self.model.overrides)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a missing file or a bad preset is reported where it is used, with its own message

    def _check_sizes(self):
        """Refuse what cannot fit: a counter overflow, parameters or a training-memory estimate over the
        limit (memory_limit_gb, else plan_memory_limit()). The estimate is a lower bound (engine/arch.py)."""
        from engine.arch import memory_fit_error
        name = type(self).__name__
        cfg = self._planned_model()
        seq_len = self.seq_len or (cfg.block_size if cfg else 1)
        if self.steps and self.steps * self.batch_size * seq_len > COUNTER_MAX:
            field = "steps" if self.steps >= self.batch_size else "batch_size"
            raise field_error(name, field, getattr(self, field),
                              f"steps x batch_size x seq_len = {self.steps:.3g} x {self.batch_size:.3g} x {seq_len} "
                              f"tokens overflows a 64-bit counter; lower {field}")
        if cfg is None:
            return
        limit, source = ((self.memory_limit_gb * 2**30, "memory_limit_gb") if self.memory_limit_gb
                         else plan_memory_limit())
        problem = memory_fit_error(
            cfg, self.micro_batch, seq_len, self.batch_size, limit, source, autocast=self.precision != "fp32",
            fused_ce=self.ops.get("linear_cross_entropy", "chunked") != "torch",  # unfused logits only when forced
            shards=None if self.parallel.strategy.startswith("zero") else 1)  # ZeRO: over devices unknown here
        if problem:
            field, message = problem
            raise field_error(name, field, self.model.model_dump() if field == "model" else self.micro_batch, message)


STAGE_SPECS = stages.STAGE_SPECS  # kind -> "module:Class", from the one registry (engine/stages.py)


class EvalSpec(Strict):
    checkpoint: InputPath
    data: DataSpec = Field(default_factory=DataSpec)
    batches: Size = 16
    micro_batch: Size = 8
    backend: stages.Backend = "auto"


class ExportSpec(Strict):
    checkpoint: InputPath
    tokenizer: TokenizerPath | None = None
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
    if kind not in stages.STAGES:
        raise SpecError(f"kind: unknown stage kind {kind!r}; known: {', '.join(stages.STAGES)}")
    return stages.STAGES[kind].load_spec()


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
