"""The MFU denominator: a device's peak dense matmul FLOP/s.

Accelerators: the vendor's dense (no sparsity) bf16/fp16 tensor-core figure, looked up by device name.
A short measured matmul is latency-bound on a datacenter GPU (a 512^3 product is microseconds of work)
and would inflate MFU. CPUs, fp32 runs and unknown devices: measured, at a size that saturates the device.
Every answer says which was used, and the run records it."""
from __future__ import annotations

import re

# (pattern searched in the device name, dense bf16/fp16 FLOP/s, the product it names). First match wins,
# so a variant precedes its family. NVIDIA: datasheet "BF16 Tensor Core" without sparsity. Ascend: the
# published fp16 figures (per chip; 910C is two dies); Huawei publishes fewer details, treat them as
# approximate. 910A has no bf16: its fp16 figure applies to fp16 only.
VENDOR_PEAKS: list[tuple[str, float, str]] = [
    (r"GB200|B200", 2250e12, "NVIDIA B200"),
    (r"H200 NVL", 835e12, "NVIDIA H200 NVL"),
    (r"H200|GH200", 989e12, "NVIDIA H200 SXM"),
    (r"H100 NVL", 835e12, "NVIDIA H100 NVL"),
    (r"H100 PCIe", 756e12, "NVIDIA H100 PCIe"),
    (r"H100|H800", 989e12, "NVIDIA H100 SXM"),
    (r"A100|A800", 312e12, "NVIDIA A100"),
    (r"Ascend910_93", 752e12, "Ascend 910C (approximate)"),
    (r"Ascend910B1", 414e12, "Ascend 910B1 (approximate)"),
    (r"Ascend910B2", 376e12, "Ascend 910B2 (approximate)"),
    (r"Ascend910B3", 313e12, "Ascend 910B3 (approximate)"),
    (r"Ascend910B4", 280e12, "Ascend 910B4 (approximate)"),
    (r"Ascend910(A|ProA|ProB|PremiumA|B)?$", 256e12, "Ascend 910A (fp16; approximate)"),
]
HALF = ("bfloat16", "float16")

# Measured fallback: a square matmul this large saturates a CPU; on an unknown accelerator larger still.
MEASURE_N = {"cpu": 1024, "accelerator": 8192}
MEASURE_SECONDS = 0.3


def vendor_peak(device_name: str, dtype_name: str) -> tuple[float, str] | None:
    """(FLOP/s, product) from the table, or None where it has no figure for this device and dtype."""
    if dtype_name not in HALF:
        return None  # fp32 runs use CUDA cores or TF32 by settings: measure instead
    for pattern, flops, product in VENDOR_PEAKS:
        if re.search(pattern, device_name.strip()):
            if product.startswith("Ascend 910A") and dtype_name == "bfloat16":
                return None
            return flops, product
    return None


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type in ("cuda", "npu"):
        module = getattr(torch, device.type)
        return module.get_device_name(device.index if device.index is not None else module.current_device())
    return device.type


def device_peak(device, dtype=None) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for `device` computing in `dtype` (None: fp32)."""
    import torch

    from engine.arch import measured_matmul_peak

    device = torch.device(device)
    dtype = dtype or torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    name = device_name(device)
    found = vendor_peak(name, dtype_name) if device.type != "cpu" else None
    if found:
        flops, product = found
        return flops, f"vendor dense {dtype_name} peak of {product}: {flops / 1e12:.0f} TFLOP/s"
    n = MEASURE_N["cpu" if device.type == "cpu" else "accelerator"]
    if device.type == "cpu" and dtype != torch.float32:
        n = 512  # a CPU without native bf16 takes seconds for one 1024^3 bf16 product
    flops = measured_matmul_peak(str(device), dtype, n=n, seconds=MEASURE_SECONDS)
    return flops, (f"measured: {n}x{n} {dtype_name} matmul on {name} ({flops / 1e9:.1f} GFLOP/s); "
                   "no vendor figure for this device and dtype")
