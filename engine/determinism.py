"""`deterministic: true`: the switches under which a resumed run is bit-identical on a GPU too.

On CPU the engine's kernels are deterministic anyway, and resume is bit-identical by default. On CUDA,
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
