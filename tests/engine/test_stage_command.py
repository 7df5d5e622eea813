"""engine.commands.common.stage_command: every stage command leaves no process group behind, whether
it succeeds or fails, so no gloo group is torn down by the interpreter at exit (where it can abort a
finished process with SIGABRT, as a 2-rank `rounds score` did in CI)."""
import pytest
import torch.distributed as dist

from engine import distributed
from engine.commands.common import EXIT_USER, stage_command


pytestmark = pytest.mark.usefixtures("group_of_one_env")


def _join_a_group():
    distributed.init(distributed.world_from_env(), "gloo", single_process_group=True)
    assert dist.is_initialized()


def test_a_command_that_succeeds_destroys_its_process_group():
    @stage_command
    def command():
        _join_a_group()
        return "done"

    assert command() == "done"
    assert not dist.is_initialized()


def test_a_command_that_fails_destroys_its_process_group_and_keeps_its_exit_code():
    @stage_command
    def command():
        _join_a_group()
        raise ValueError("steps: must be positive")

    with pytest.raises(SystemExit) as exc:
        command()
    assert exc.value.code == EXIT_USER
    assert not dist.is_initialized()
