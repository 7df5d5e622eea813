"""Backend selection: npu, then cuda, then cpu, by what is present (overridable per job).

A backend fixes the device, the process-group backend, the autocast dtype and the default
implementation of every operator; `ops` overrides pick another implementation per operator.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from engine.ops import OP_NAMES, OpTable, build_table

log = logging.getLogger(__name__)

DEFAULT_IMPLEMENTATIONS = {
    "cpu": {op: "torch" for op in OP_NAMES},
    "cuda": {"rms_norm": "triton", "rotary": "triton", "swiglu": "triton", "attention": "triton",
             "linear_cross_entropy": "triton", "adamw": "triton"},
    "npu": {op: "npu" for op in OP_NAMES},
}
PROCESS_GROUP_BACKEND = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


@lru_cache(maxsize=1)
def npu_available() -> bool:
    """True only when torch_npu imports and sees a device. A broken CANN raises more than
    ImportError (OSError for a missing libhccl.so, RuntimeError at init), so catch everything."""
    try:
        import torch_npu  # noqa: F401
        return bool(torch.npu.is_available())
    except Exception as exc:  # pragma: no cover - depends on the host
        log.debug("torch_npu unavailable: %s", exc)
        return False


def detect() -> str:
    if npu_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class Backend:
    name: str
    device: torch.device
    ops: OpTable
    autocast_dtype: torch.dtype | None  # None: fp32 throughout
    process_group: str
    notes: dict = field(default_factory=dict)

    def autocast(self):
        """One context gives every device its mixed-precision path (nanoGPT style)."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "process_group": self.process_group,
                "precision": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "fp32",
                "ops": dict(self.ops.chosen), **self.notes}


def resolve(requested: str = "auto", precision: str = "bf16", op_overrides: dict[str, str] | None = None,
            local_rank: int = 0) -> Backend:
    name = detect() if requested == "auto" else requested
    if name not in DEFAULT_IMPLEMENTATIONS:
        raise ValueError(f"backend: unknown backend {name!r}; choose auto, npu, cuda or cpu")
    if name == "npu" and not npu_available():
        raise RuntimeError("backend: npu requested but torch_npu or an Ascend device is not available")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("backend: cuda requested but no CUDA device is available")
    overrides = dict(op_overrides or {})
    unknown = set(overrides) - set(OP_NAMES)
    if unknown:
        raise ValueError(f"ops: unknown operator(s) {sorted(unknown)}; known: {list(OP_NAMES)}")
    chosen = {**DEFAULT_IMPLEMENTATIONS[name], **overrides}
    notes = {}
    if name == "npu":
        from npu_kernels.runtime import configure_npu
        notes = configure_npu()
        device = torch.device("npu", local_rank)
    elif name == "cuda":
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dtype = _autocast_dtype(name, precision)
    backend = Backend(name, device, build_table(name, chosen), dtype, PROCESS_GROUP_BACKEND[name], notes)
    log.info("backend %s", backend.describe())
    return backend


def _autocast_dtype(name: str, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        if name == "npu" and not torch.npu.is_bf16_supported():  # 910A: fp16 with loss scaling
            return torch.float16
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"precision: unknown precision {precision!r}; choose bf16, fp16 or fp32")
