"""Fault injection for tests: deterministic faults the training loop cannot tell from real ones.
A no-op unless its environment variable is set.

TINYFORGE_INJECT_NONFINITE=3,7   the training loss of steps 3 and 7 (1-based, as logged) becomes NaN,
                                 so their gradients are NaN too. Each listed step is poisoned once per
                                 process (a transient fault): a rollback that replays it trains cleanly."""
from __future__ import annotations

import os

NONFINITE_ENV = "TINYFORGE_INJECT_NONFINITE"


def nonfinite_steps(env=os.environ) -> set[int]:
    raw = env.get(NONFINITE_ENV, "").strip()
    try:
        return {int(s) for s in raw.split(",") if s.strip()}
    except ValueError:
        raise ValueError(f"{NONFINITE_ENV}: expected comma-separated step numbers, got {raw!r}") from None


class NonfiniteLoss:
    """Multiplies the model's training loss by NaN at the listed steps (a forward hook on the model,
    so backward sees it). Set `.step` to the step being trained (1-based) before its forward passes."""

    def __init__(self, model, steps: set[int]):
        self.pending, self.step, self.fired = set(steps), 0, []
        self.handle = model.register_forward_hook(self._hook) if steps else None

    def _hook(self, module, args, output):
        if self.step in self.pending and module.training and output.dim() == 0:  # a training loss, not eval
            if self.step not in self.fired:
                self.fired.append(self.step)
            return output * float("nan")
        return output

    def step_done(self) -> None:
        """The step finished (trained, skipped or rolled back): do not poison it again."""
        self.pending.discard(self.step)
