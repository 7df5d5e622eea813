"""Process-group set-up and data-parallel wrapping, applied to the model from outside."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def init(world: World, backend_name: str, single_process_group: bool = False) -> None:
    """Join the process group when launched by torchrun; `single_process_group` makes a group of one
    for a single process that still needs one (DeepSpeed ZeRO, which otherwise looks for MPI)."""
    if dist.is_initialized():
        return
    if world.size > 1:
        dist.init_process_group(backend=backend_name)
    elif single_process_group:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend=backend_name, rank=0, world_size=1)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mean_across(value: float, world: World, device) -> float:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world.size


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
