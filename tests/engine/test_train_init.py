"""init.weights: random takes only the shape from a checkpoint (the recipe's from-scratch control)."""
import pytest
import torch

from engine import checkpoint as ckpt
from engine.spec import SpecError, parse
from tests.engine.test_resume import QUIET, final_state


def test_random_weights_take_the_shape_only(tmp_path, trained_run, micro_spec):
    from engine.train import train

    _, result = trained_run
    shaped = train(micro_spec(init={"checkpoint": result["summary"]["checkpoint"], "weights": "random"}),
                   tmp_path / "shaped", **QUIET)
    fresh = train(micro_spec(), tmp_path / "fresh", **QUIET)  # the same preset: the same shape, seed and data
    a, b = final_state(tmp_path / "shaped"), final_state(tmp_path / "fresh")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert shaped["summary"]["val_loss"] == fresh["summary"]["val_loss"]
    loaded = train(micro_spec(init={"checkpoint": result["summary"]["checkpoint"]}), tmp_path / "loaded", **QUIET)
    assert loaded["summary"]["val_loss"] < shaped["summary"]["val_loss"]  # its weights did load
    assert ckpt.list_checkpoints(tmp_path / "shaped" / "checkpoints")


@pytest.mark.parametrize("init, field", [({"weights": "random"}, "init.weights"),
                                         ({"checkpoint": "x", "weights": "random", "continue_run": True},
                                          "init.weights"),
                                         ({"continue_run": True}, "init.continue_run")])
def test_bad_init_names_the_field(init, field):
    with pytest.raises(SpecError, match=field):
        parse("train", {"init": init})
