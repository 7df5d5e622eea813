"""The `rounds` stage's config: a train config (shared by every round) plus how to score the
previous round's batches, how to draw the next round's from them, and how many rounds to run."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from engine.fields import InputPath, Size
from engine.spec import TrainSpec

# fields of RoundsSpec that are not TrainSpec fields (dropped when a round's TrainSpec is built)
ROUND_FIELDS = ("first_round_steps", "rounds", "rate", "temperature", "strategy", "fresh_fraction", "score",
                "reference", "granularity", "pool", "lr_schedule", "sample_seed", "score_micro_batch",
                "score_chunk")


class RoundsSpec(TrainSpec):
    """Round 1 is either `init.checkpoint` (trained by an earlier stage) or trained here for
    `first_round_steps`; then `rounds` replay rounds follow, each scoring the pool with the previous
    round's frozen model, drawing rate x N items without replacement from softmax(score / T), and
    training on them from the previous round's weights."""
    steps: Size | None = Field(None, description="steps of each replay round; default: one pass over the "
                                                        "drawn set")
    first_round_steps: Size | None = Field(None, description="train round 1 here (from model.preset) for "
                                                                    "this many steps; else init.checkpoint is round 1")
    rounds: PositiveInt = Field(1, description="replay rounds after round 1 (the paper: 1; a second saturated)")
    rate: float = Field(0.5, gt=0, le=1, description="share of the pool drawn for each replay round (N0 = rate x N)")
    temperature: PositiveFloat = Field(1.0, description="T in p = softmax(score / T); large T -> uniform")
    strategy: Literal["hard", "uniform", "fresh"] = Field(
        "hard", description="hard: p = softmax(score / T); uniform: the control at the same rate; fresh: only "
                            "batches no round has trained on (continuing on new data)")
    fresh_fraction: float = Field(0.0, ge=0, lt=1, description="share of each replay round drawn from unseen "
                                                               "batches instead of the pool")
    score: Literal["loss", "reducible"] = Field(
        "loss", description="loss of the previous round's model, or that minus a reference model's loss (RHO-LOSS)")
    reference: InputPath | None = Field(None, description="checkpoint of the reference model (score: reducible)")
    granularity: Literal["batch", "sequence"] = Field(
        "batch", description="score and draw whole training batches (the paper) or single sequences")
    pool: Literal["seen", "all"] = Field(
        "seen", description="seen: the batches round 1 trained on (read from its run record); all: every batch "
                            "of one epoch")
    lr_schedule: Literal["continue", "rewarm", "constant"] = Field(
        "continue", description="continue (the paper): each replay round is the next epoch of one run: the same "
                                "learning-rate schedule goes on (at its floor if it had ended) and the AdamW moments "
                                "carry over; round 1 trained here plans its schedule over every round. rewarm: each "
                                "round its own warmup + cosine from optim.lr and fresh AdamW moments; constant: a "
                                "constant lr equal to the previous round's last one, fresh moments")
    sample_seed: int | None = Field(None, description="seed of the draws; default: seed + round number")
    score_micro_batch: Size | None = Field(None, description="sequences per scoring forward pass; "
                                                                    "default 4 x micro_batch (no activations kept)")
    score_chunk: PositiveInt = Field(512, description="sequences per persisted chunk of scores (the unit a "
                                                      "killed scoring pass resumes from)")

    @model_validator(mode="after")
    def _check_rounds(self):
        if self.init.hf_dir:
            raise ValueError("init.hf_dir: a rounds stage starts from an engine checkpoint (init.checkpoint) or "
                             "trains round 1 itself (first_round_steps)")
        if bool(self.init.checkpoint) == bool(self.first_round_steps):
            raise ValueError("init.checkpoint: give either init.checkpoint (round 1 trained elsewhere) or "
                             "first_round_steps (train round 1 here), exactly one")
        if self.score == "reducible" and not self.reference:
            raise ValueError("reference: score 'reducible' needs a reference model checkpoint")
        if self.reference and self.score != "reducible":
            raise ValueError("reference: only used with score 'reducible'")
        if self.data.batch_ids or self.data.window_ids:
            raise ValueError("data.batch_ids: a rounds stage chooses each round's batches itself; leave it unset")
        if self.strategy == "fresh" and self.fresh_fraction:
            raise ValueError("fresh_fraction: strategy 'fresh' already draws only unseen batches")
        if "probe_batches" not in self.data.model_fields_set:
            self.data.probe_batches = 4  # the forgetting probe is part of what a round records
        return self

    def round_spec(self, **overrides) -> TrainSpec:
        """The TrainSpec of one round: these shared fields with `overrides` (dotted one level: data, optim, init)."""
        base = self.model_dump(exclude=set(ROUND_FIELDS))
        for key, value in overrides.items():
            if isinstance(value, dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return TrainSpec.model_validate(base)
