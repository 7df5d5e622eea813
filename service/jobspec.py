"""The job spec: what `POST /v1/jobs` accepts (after service/body.py has parsed it), shared with the API's
OpenAPI document. Stage configs stay dicts here: each is validated by its engine schema when planned
(service/planning.py)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from engine import stages
from service.body import SpecError, error, pydantic_errors

# the stage kinds and their engine commands (tinyforge <command> --config FILE --out DIR): the engine's registry
StageKind = Literal[tuple(stages.STAGES)]
KINDS: tuple[str, ...] = tuple(stages.STAGES)
STAGE_COMMANDS = {kind: k.command for kind, k in stages.STAGES.items()}
NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


def parse_duration(value):
    """Seconds from 90, 90.5, "90s", "30m", "2h", "1d", "1h30m"; None stays None."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        if value is not None and value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                             r"(?:(\d+(?:\.\d+)?)s?)?\s*", value)
        if parts and any(parts.groups()):
            d, h, m, s = (float(x) if x else 0.0 for x in parts.groups())
            total = d * 86400 + h * 3600 + m * 60 + s
            if total > 0:
                return total
    raise ValueError(f"expected seconds or a duration like '90s', '30m', '2h', '1h30m'; got {value!r}")


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmOptions(Strict):
    partition: str | None = None
    account: str | None = None
    extra_args: list[str] = Field(default_factory=list, description="further sbatch arguments")


class Resources(Strict):
    backend: Literal[stages.BACKENDS] = "auto"
    devices_per_node: int = Field(1, ge=1, le=128, description="processes per node (devices, or CPU ranks)")
    nodes: int = Field(1, ge=1, le=4096)
    launcher: Literal["local", "slurm"] = "local"
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    max_restarts: int = Field(3, ge=0, le=100, description="automatic restarts after infra failures, "
                                                          "preemption or a lost worker")
    time_limit: Duration = Field(None, description="running time limit (seconds or '2h')")
    queue_time_limit: Duration = Field(None, description="fail instead of waiting longer than this")
    slurm: SlurmOptions | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.nodes > 1 and self.launcher == "local":
            raise ValueError("nodes: the local launcher runs on one node; use launcher: slurm for nodes > 1")
        return self


class StageSpec(Strict):
    name: str | None = Field(None, pattern=NAME, description="default: the kind")
    kind: StageKind
    config: dict[str, Any] = Field(default_factory=dict)


class ParentSpec(Strict):
    """The larger model the child inherits from: an existing checkpoint / HF directory, or one to train."""
    checkpoint: str | None = None
    hf_dir: str | None = None
    train: dict[str, Any] | None = Field(None, description="train config of a parent stage run first")

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.checkpoint, self.hf_dir, self.train)) != 1:
            raise ValueError("give exactly one of checkpoint, hf_dir, train")
        return self


class RecipeSpec(Strict):
    """The PanGu-pi Pro pipeline: compact tokenizer -> inherit -> round 1 -> round 2 -> export -> eval, and
    optionally a from-scratch control of the child's shape (scratch -> eval_scratch).
    Each section is that stage's config, merged over the wiring the expansion fills (service/recipe.py)."""
    data: dict[str, Any] = Field(default_factory=lambda: {"sources": ["data/sample"]},
                                 description="corpus settings shared by every stage that reads data")
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    parent: ParentSpec
    inherit: dict[str, Any] = Field(default_factory=dict)
    round1: dict[str, Any] = Field(default_factory=dict)
    round2: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    scratch: dict[str, Any] | None = Field(
        None, description="the control: a train config for the child's shape from a random init (give it round 1 "
                          "+ round 2's steps for equal training compute); adds stages scratch and eval_scratch, and "
                          "the job's comparison")


class Webhook(Strict):
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)


Label = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class JobSpec(Strict):
    name: str = Field(min_length=1, max_length=200)
    labels: dict[Label, Annotated[str, Field(max_length=200)]] = Field(default_factory=dict, max_length=50)
    stages: list[StageSpec] | None = Field(None, min_length=1, max_length=64)
    recipe: RecipeSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    webhook: Webhook | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.stages is None) == (self.recipe is None):
            raise ValueError("give either stages or recipe (not both)")
        return self


def validate_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([error(("body",), "expected a mapping (a job spec object)", "dict_type")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc, ("body",))) from None
