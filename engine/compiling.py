"""`compile: auto`: torch.compile the training forward (from outside the model) when the run is long
enough to repay the compile time, with a persistent compile cache so that a resumed or repeated run
does not pay again.

Rule: compile when the estimated eager run times the fraction compile saves is at least the first
compile's cost. Both measured on 2-core CPUs: the demo-scale model's first compile took 28-37 s and the
bench row's (8 layers) 57 s with the machine idle (172 s on a Zen 5 at load ~10, where the eager steps
slow alike); a second process with the cache 2-12 s. The saving depends on the precision: at the demo's
shapes (session 9, Zen 4, one process, alternated) bf16 compiled took 58.9 / 27.5 ms a step against 115.1
/ 58.6 eager (parent / 64-wide child), fp32 106.2 / 43.3 against 124.1 / 56.4: eager bf16 on a CPU
spends its time in casts and unfused element-wise ops that compile removes."""
from __future__ import annotations

import os
import shutil

import torch

from engine import determinism
from engine.paths import state_home

COMPILE_COST_S = 60.0  # a first (uncached) compile of a small model on a few CPU cores
EXPECTED_SAVING = 0.2  # fraction of the eager step time compile saves (fp32 on a CPU: 0.14-0.23 measured)
CPU_BF16_SAVING = 0.5  # bf16 on a CPU: 0.49-0.53 measured at the demo's shapes
# Eager training throughput assumed for the estimate. On a CPU a fixed rate per core, not the matmul peak
# measured at start: measured under load that peak fell 30x here (33 against 924 GFLOP/s in bf16) and would
# have made every short run look long; the demo's parent (1.65e13 FLOPs in 204 s on 2 cores, fp32) gives
# about 40 GFLOP/s a core. On an accelerator a fraction of its peak (a vendor figure where known).
CPU_EAGER_FLOPS_PER_CORE = 40e9
EAGER_MFU = 0.15  # measured 17.7% of the bf16 matmul peak at the small scale on a quiet CPU


def eager_rate(device_type: str, peak_flops: float) -> float:
    if device_type == "cpu":  # the threads this process computes with (the ablation's runs: one each)
        return CPU_EAGER_FLOPS_PER_CORE * torch.get_num_threads()
    return max(peak_flops * EAGER_MFU, 1.0)


def expected_saving(device_type: str, autocast_dtype: torch.dtype | None) -> float:
    return CPU_BF16_SAVING if device_type == "cpu" and autocast_dtype == torch.bfloat16 else EXPECTED_SAVING


def cache_dir():
    return state_home() / "compile-cache"


def enable_persistent_cache() -> str:
    """Inductor's FX-graph and AOT-autograd caches, kept under $TINYFORGE_HOME (not /tmp)."""
    path = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    os.makedirs(path, exist_ok=True)
    return path


def compile_training(module, device_type: str):
    """torch.compile of the training forward, from outside the model, with the persistent cache; on a CPU
    with the switch that makes compiled steps reproducible (engine/determinism.py)."""
    enable_persistent_cache()
    if device_type == "cpu":
        determinism.for_compiled_cpu()
    return torch.compile(module)


def decide(setting, *, steps: int, tokens_per_step: int, flops_per_token: float, peak_flops: float,
           device_type: str, autocast_dtype: torch.dtype | None, strategy: str,
           resumed: bool | None = None) -> tuple[bool, str, float]:
    """(compile?, why, estimated eager run seconds). `resumed`: the decision a checkpoint of this run
    recorded, which a resume keeps (compiled and eager steps differ in the last bits)."""
    est = steps * tokens_per_step * flops_per_token / eager_rate(device_type, peak_flops)
    if resumed is not None:
        return resumed, f"as decided when this run started ({'compiled' if resumed else 'eager'})", est
    if setting is True or setting is False:
        return setting, f"compile: {str(setting).lower()} as configured", est
    if strategy.startswith("zero"):
        return False, "auto -> eager: DeepSpeed ZeRO wraps the model itself", est
    if device_type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("cc")):
        return False, "auto -> eager: no C++ compiler for inductor's CPU kernels", est
    saving = expected_saving(device_type, autocast_dtype)
    need = COMPILE_COST_S / saving
    if est < need:
        return False, (f"auto -> eager: estimated eager run {est:,.0f} s is under {need:,.0f} s, too short for a "
                       f"~{saving:.0%} saving to repay a ~{COMPILE_COST_S:.0f} s first compile"), est
    return True, (f"auto -> compiled: estimated eager run {est:,.0f} s, compile ~{COMPILE_COST_S:.0f} s the first "
                  f"time (cached in {cache_dir()}), saving ~{saving:.0%}"), est
