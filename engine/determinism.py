"""`deterministic: true`: the switches under which a resumed run is bit-identical on a GPU too.

On CPU the engine's eager kernels are deterministic anyway, and resume is bit-identical by default;
compiled CPU steps are made so by `for_compiled_cpu` (below), whatever this setting. On CUDA,
flash/memory-efficient SDPA backward, cuBLAS split-K workspaces and some atomics-based kernels reduce
in a varying order, so two runs (and a run and its resume) agree only to a tolerance unless this is on
(tests/engine/test_gpu_paths.py holds the weights to 1e-3 + 1e-2 relative after 12 bf16 steps; not yet run on a GPU). It costs speed: attention runs SDPA's
math backend (cuda_fallback.attention reads the same flag), and torch raises on any op without a
deterministic implementation instead of silently varying."""
from __future__ import annotations

import os

import torch

# cuBLAS needs a fixed workspace configuration for reproducible results (CUDA docs, "Results
# reproducibility"); it is read when the first handle is created, so this runs before any CUDA matmul.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def enable() -> dict:
    """Turn determinism on for this process; returns what the run record should note."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # SDPA's fused CUDA backends have non-deterministic backward passes: leave only the math one
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    return {"deterministic": True, "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"]}


def enabled() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def for_compiled_cpu() -> None:
    """Inductor's CPU code sums the embedding gradient with atomic adds from parallel threads, in an order
    that varies from run to run: two processes with the same seed had different parameters after one or
    two compiled steps (session 9), so a compiled run and its resume would not be bit-identical. With
    torch's deterministic algorithms on, inductor calls ATen's index_put instead, which is serial on a
    CPU; a compiled small-row step took 127.7, 129.7 and 128.1 ms against 123.3, 129.7 and 128.2 without it
    (min, alternated in each of three processes). Uninitialised memory is not filled (that would cost a
    pass per allocation); the flag stays on for the process, which trains one run."""
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
