"""Stage schema registry for the service-level tests: every kind validated by FakeStage, the config of
tests/support/fake_engine.py (the engine's own schemas are exercised by the engine tests). Point
TINYFORGE_STAGE_SPECS at tests.support.fake_specs:STAGE_SPECS (the harness does). Its fields carry the
engine's markers (engine/fields.py), so the service checks them as it checks a real schema's: `source` is
an input path inside the data roots, `steps` a positive size."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from engine import stages
from engine.fields import InputPath, Size

NAME = "tests.support.fake_specs"


class FakeStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: Size = 5
    step_time: float = Field(0.02, ge=0)
    exit_code: int | None = None  # exit with this code at step fail_at
    fail_at: int = 0
    fail_attempts: int = 1000  # only fail while TINYFORGE_ATTEMPT <= this
    checkpoint_every: PositiveInt = 1
    ignore_sigterm: bool = False
    no_result: bool = False
    artifacts: list[dict] = Field(default_factory=lambda: [{"name": "checkpoint", "type": "checkpoint"}])
    echo: Any = None
    lines: int = 0
    source: InputPath | None = None
    # bulk: record `steps` points in this many large writes, as fast as it can (no checkpoints): a long
    # run's metrics in seconds, for the chart and final-flush tests
    bulk_chunks: PositiveInt | None = None


STAGE_SPECS = {kind: f"{NAME}:FakeStage" for kind in stages.STAGES}  # every kind the service accepts
