"""Run by tests/engine/test_gpu_paths.py under torchrun (2 gloo processes): each rank resolves the cuda backend
as training does, with CUDA faked (no GPU here), and records which device it made current and what
the process group was bound to, in order. Rank 0 writes every rank's record as JSON to argv[1]."""
import json
import sys

import torch
import torch.distributed as dist

calls = []
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.set_device = lambda device: calls.append(["set_device", str(torch.device(device))])
real_init = dist.init_process_group


def init_process_group(*args, **kwargs):
    calls.append(["init_process_group", str(kwargs.get("device_id"))])
    kwargs.pop("device_id", None)  # gloo on CPU: the recorded binding is what is checked
    return real_init(*args, **kwargs)


dist.init_process_group = init_process_group

from engine import distributed  # noqa: E402
from engine.backend import resolve  # noqa: E402

world = distributed.world_from_env()
backend = resolve("cuda", "fp32", {op: "torch" for op in ("rms_norm", "rotary", "swiglu", "attention",
                                                          "linear_cross_entropy", "adamw")}, world.local_rank)
distributed.init(world, "gloo", device=backend.device)
records = [None] * world.size
dist.all_gather_object(records, {"rank": world.rank, "local_rank": world.local_rank,
                                 "device": str(backend.device), "calls": calls})
if world.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(records, f)
distributed.shutdown()
