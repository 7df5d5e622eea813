"""Backend selection: npu, then cuda, then cpu, by what is present (overridable per job).

A backend fixes the device, the process-group backend, the autocast dtype and the default
implementation of every operator; `ops` overrides pick another implementation per operator.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from engine.ops import OP_NAMES, OpTable, build_table
from engine.spec import FP16_REFUSED

log = logging.getLogger(__name__)

DEFAULT_IMPLEMENTATIONS = {
    # chunked loss: never the full [tokens, vocab] logits; measured 5-8% faster a step at vocab 8,000 and even at
    # 2,048 (bench/train_throughput.py's rows, bf16, 1 thread, docs/train-speed.md); attention with a matmul
    # backward inside compiled graphs (engine/cpu_ops.py: 1.8x faster than the flash backward there); fused
    # AdamW (engine/cpu_ops.py: 4.4x faster an optimizer step than foreach)
    "cpu": {**{op: "torch" for op in OP_NAMES}, "linear_cross_entropy": "chunked", "attention": "cpu",
            "adamw": "cpu"},
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


def resolve(requested: str = "auto", precision: str = "auto", op_overrides: dict[str, str] | None = None,
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
    from engine.distributed import bind_device
    device = bind_device(name, local_rank)  # current before any kernel, probe or process group touches it
    defaults, notes = DEFAULT_IMPLEMENTATIONS[name], {}
    if name == "npu":
        from npu_kernels.runtime import configure_npu
        notes = configure_npu()
        defaults = npu_defaults(notes["npu_device"])
    chosen = {**defaults, **overrides}
    dtype, why = choose_precision(name, precision)
    notes = {**notes, "precision_choice": why}
    if name == "cpu":
        from engine.cpu_allocator import keep_freed_memory
        notes["allocator"] = keep_freed_memory()
    if precision == "bf16" and name == "cpu" and not bf16_native("cpu"):
        log.warning("precision: %s", why)
    backend = Backend(name, device, build_table(name, chosen), dtype, PROCESS_GROUP_BACKEND[name], notes)
    log.info("backend %s", backend.describe())
    return backend


# Measured on a 2-core AMD EPYC Zen 3 (AVX2, no AVX512-BF16/AMX): bf16 matmul 0.8 GFLOP/s, fp32 100 GFLOP/s.
NON_NATIVE_BF16_SLOWDOWN = "about 100x slower matmuls than fp32 (0.8 vs 100 GFLOP/s measured on an AVX2 CPU)"


def bf16_native(device_type: str) -> bool:
    """Whether the device computes bf16 natively, as torch reports it. CPU: oneDNN's bf16 check
    (torch.ops.mkldnn._is_mkldnn_bf16_supported(): AVX512-class x86, or ARM with bf16); CUDA/NPU:
    is_bf16_supported(). Tests monkeypatch this function to inject the answer."""
    try:
        if device_type == "cpu":
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if device_type in ("cuda", "npu"):
            return bool(getattr(torch, device_type).is_bf16_supported())
    except Exception as exc:  # pragma: no cover - an old torch or a broken accelerator runtime
        log.debug("bf16 capability check failed on %s: %s", device_type, exc)
    return False


def choose_precision(name: str, precision: str) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, the reason, for the log and the run record).
    auto: bf16 where the device computes it natively, else fp32 (CPU, a 910A NPU, a CUDA
    device without bf16; fp16 is refused, see FP16_REFUSED)."""
    if precision == "auto":
        if bf16_native(name):
            how = "torch.ops.mkldnn._is_mkldnn_bf16_supported()" if name == "cpu" else f"torch.{name}.is_bf16_supported()"
            return torch.bfloat16, f"auto -> bf16: {name} computes bf16 natively ({how} is True)"
        if name == "npu":
            return None, "auto -> fp32: this NPU has no bf16 (910A), and fp16 is refused (no loss scaling)"
        if name == "cpu":
            return None, ("auto -> fp32: this CPU has no native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported() "
                          f"is False); bf16 autocast would mean {NON_NATIVE_BF16_SLOWDOWN}")
        return None, f"auto -> fp32: {name} reports no bf16 support"
    dtype = _autocast_dtype(name, precision)
    why = f"{precision} as configured"
    if precision == "bf16" and name == "cpu" and not bf16_native("cpu"):
        why = (f"bf16 as configured, but this CPU has no native bf16: expect {NON_NATIVE_BF16_SLOWDOWN}; "
               "precision: auto (or fp32) chooses fp32 here")
    return dtype, why


def _autocast_dtype(name: str, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        if name == "npu" and not torch.npu.is_bf16_supported():
            raise ValueError("precision: bf16 is not supported by this Ascend chip (910A); use auto or fp32")
        return torch.bfloat16
    if precision == "fp16":
        raise ValueError(FP16_REFUSED)
    raise ValueError(f"precision: unknown precision {precision!r}; choose auto, bf16 or fp32")


# torch_npu operators documented for Atlas A2 (910B) and A3 (910C) only (npu_swiglu,
# npu_fusion_attention): on the first 910 (910A, "Atlas training series") the reference runs instead.
A2_ONLY_NPU_OPS = ("swiglu", "attention")


def npu_generation(device_name: str) -> str:
    """'a2+' for Atlas A2/A3 chips (Ascend910B1..B4, Ascend910_93xx), 'a1' for the first 910
    (Ascend910A, Ascend910B, 910ProA/ProB, 910PremiumA) and anything unrecognised."""
    if re.fullmatch(r"Ascend910B\d.*|Ascend910_\d+.*", device_name.strip()):
        return "a2+"
    return "a1"


def npu_defaults(device_name: str) -> dict[str, str]:
    """The default npu table for this chip: A2-only operators fall back to the reference on older chips."""
    chosen = dict(DEFAULT_IMPLEMENTATIONS["npu"])
    if npu_generation(device_name) != "a2+":
        chosen.update({op: "torch" for op in A2_ONLY_NPU_OPS})
        log.info("npu %s predates Atlas A2: %s use the reference implementation", device_name, A2_ONLY_NPU_OPS)
    return chosen
