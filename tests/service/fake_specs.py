"""Stage schema registry for the service tests: every kind validated by FakeStage (the engine's own
schemas are exercised by test_spec.py). Point TINYFORGE_STAGE_SPECS at fake_specs:STAGE_SPECS.
Its fields carry the engine's markers (engine/fields.py), so the service checks them as it checks a real
schema's: `source` is an input path inside the data roots, `steps` a positive size."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from engine import stages
from engine.fields import InputPath, Size


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


STAGE_SPECS = {kind: "fake_specs:FakeStage" for kind in stages.STAGES}  # every kind the service accepts
