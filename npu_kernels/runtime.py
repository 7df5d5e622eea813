"""NPU runtime: import torch_npu safely, configure the process at start-up, report versions.

Written against torch 2.13 / torch_npu 2.13 (Ascend Extension for PyTorch 7.x) / CANN 8.x documentation;
not executed in CI (no Ascend device there)."""
from __future__ import annotations

import logging
import os
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

# HCCL's own defaults are short for a first compile of a large model; the user's environment wins.
HCCL_TIMEOUT_DEFAULTS = {"HCCL_CONNECT_TIMEOUT": 1200, "HCCL_EXEC_TIMEOUT": 1800}


@lru_cache(maxsize=1)
def _import():
    try:
        import torch_npu
        return torch_npu, None
    except Exception as exc:  # a broken CANN raises OSError/RuntimeError, not only ImportError
        return None, f"{type(exc).__name__}: {exc}"


def torch_npu_module(op: str = "npu"):
    """torch_npu, or a RuntimeError saying why it cannot be used."""
    module, error = _import()
    if module is None:
        raise RuntimeError(f"{op}: needs torch_npu with Ascend CANN (pip install 'tinyforge[npu]'); "
                           f"importing it failed: {error}")
    return module


def hccl_timeouts(environ: dict[str, str], defaults: dict[str, int] = HCCL_TIMEOUT_DEFAULTS) -> dict[str, str]:
    """HCCL time-out variables to export: each default unless the environment already sets it,
    in which case that value is checked (a positive whole number of seconds) and kept."""
    out = {}
    for name, default in defaults.items():
        value = environ.get(name, str(default))
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"{name}: must be a positive whole number of seconds, got {value!r}")
        out[name] = value
    return out


def configure_npu() -> dict:
    """Start-up settings for training on Ascend; returns what run metadata should record."""
    torch_npu = torch_npu_module("backend npu")
    # Ascend's binary (pre-compiled) kernels; online jit compilation is slow and not needed.
    torch.npu.set_compile_mode(jit_compile=False)
    timeouts = hccl_timeouts(os.environ)
    os.environ.update(timeouts)
    try:
        from torch_npu.npu.utils import get_cann_version
        cann = get_cann_version(module="CANN")
    except Exception as exc:  # older torch_npu has no get_cann_version
        cann = f"unknown ({type(exc).__name__})"
    current = torch.npu.current_device()  # this rank's device, made current by engine.distributed.bind_device
    info = {"torch": torch.__version__, "torch_npu": getattr(torch_npu, "__version__", "unknown"), "cann": cann,
            "npu_device": torch.npu.get_device_name(current), "npu_index": current,
            "npu_count": torch.npu.device_count(),
            "bf16_supported": bool(torch.npu.is_bf16_supported()),
            "visible_devices": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), **timeouts}
    log.info("npu runtime %s", info)
    return info
