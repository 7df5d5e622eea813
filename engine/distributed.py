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


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once): torch's intra-op threads beyond
    that only contend for the same execution units."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(topo + "physical_package_id") as pkg, open(topo + "core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def choose_cpu_threads(env=os.environ) -> tuple[int | None, str]:
    """Intra-op threads for one training process on a CPU, and why (None: keep torch's setting): with
    TINYFORGE_THREADS, that; with several processes on this machine (LOCAL_WORLD_SIZE, set by torchrun), the
    physical cores divided among them, never oversubscribed (torchrun's own default, 1 a process, leaves
    cores idle); alone, torch's own choice (its physical cores, OMP_NUM_THREADS, or what an in-process
    caller such as the ablation's worker pool set)."""
    if env.get("TINYFORGE_THREADS"):
        return max(1, int(env["TINYFORGE_THREADS"])), "TINYFORGE_THREADS"
    local = int(env.get("LOCAL_WORLD_SIZE", 1))
    if local > 1:
        cores = physical_cores()
        return max(1, cores // local), f"{cores} physical cores / {local} processes on this machine"
    return None, f"one process; {physical_cores()} physical cores"


def bind_device(kind: str, local_rank: int) -> torch.device:
    """This rank's device, made current. Triton (and Liger) launch on the current device, not the
    tensors', and HCCL wants torch.npu.set_device before the process group starts: without this every
    rank but 0 would launch its kernels on device 0 with pointers into its own device."""
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind)
    count = module.device_count()
    if local_rank >= count:
        raise RuntimeError(f"backend: local rank {local_rank} has no {kind} device (this process sees {count}; "
                           "check CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES and --nproc_per_node)")
    device = torch.device(kind, local_rank)
    module.set_device(device)
    return device


def init(world: World, backend_name: str, single_process_group: bool = False,
         device: torch.device | None = None) -> None:
    """Join the process group when launched by torchrun; `single_process_group` makes a group of one
    for a single process that still needs one (DeepSpeed ZeRO, which otherwise looks for MPI).
    `device` (an accelerator already made current by bind_device) binds the group to it."""
    if dist.is_initialized():
        return
    bound = {"device_id": device} if device is not None and device.type != "cpu" else {}
    if world.size > 1:
        dist.init_process_group(backend=backend_name, **bound)
    elif single_process_group:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend=backend_name, rank=0, world_size=1, **bound)


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
