"""Where Triton kernels may run: CUDA tensors, or CPU tensors under the interpreter. The interpreter
is chosen when kernels are decorated (import time), so TRITON_INTERPRET=1 must be set before
cuda_fallback's kernel modules are imported."""
from __future__ import annotations

import torch
import triton


def interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def check_device(op: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            if t.dtype in (torch.bfloat16, torch.float16):
                raise ValueError(f"{op}: Triton's interpreter computes in fp32 only; got {t.dtype}")
            continue
        raise RuntimeError(f"{op}: Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
                           f"set before cuda_fallback is imported); got a {t.device.type} tensor")


def row_programs(n_blocks: int, device: torch.device) -> int:
    """Programs for a persistent row loop: a few per SM on a GPU, a handful in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_blocks, 4 * sms))
    return max(1, min(n_blocks, 4))
