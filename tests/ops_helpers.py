"""Shared by the operator tests. Importing this module first puts Triton in interpreter mode when
there is no GPU (it must happen before cuda_fallback's kernels are imported), so the Triton kernels
run on CPU fp32 tensors in the normal test suite; with a GPU they run natively on it."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_fwd_bwd(fn, inputs: list[torch.Tensor], upstream: torch.Tensor | None = None, seed: int = 0):
    """fn(*inputs) and the gradients of every input that requires grad, for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    if upstream is None:
        upstream = torch.randn(out.shape, generator=torch.Generator(device="cpu").manual_seed(seed))
    upstream = upstream.to(out)
    out.backward(upstream)
    return out.detach(), [t.grad for t in leaves if t.requires_grad], upstream


def assert_matches_reference(fn, ref, inputs: list[torch.Tensor], atol: float = 1e-5, rtol: float = 1e-5):
    out, grads, upstream = run_fwd_bwd(fn, inputs)
    ref_out, ref_grads, _ = run_fwd_bwd(ref, inputs, upstream)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol, msg=lambda m: f"forward: {m}")
    assert len(grads) == len(ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol, msg=lambda m, i=i: f"grad of input {i}: {m}")
