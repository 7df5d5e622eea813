"""The CPU table's attention (engine/cpu_ops.py): its matmul backward against the reference, and that a
compiled training graph really takes it; the CPU thread choice."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import cpu_ops, distributed, ops
from engine.backend import resolve


def _qkv(B=2, Hq=4, Hkv=2, T=64, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g) for h in (Hq, Hkv, Hkv)], torch.randn(B, Hq, T, D, generator=g)


def _grads(fn, q, k, v, grad_out, autocast=False):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(q, k, v)
    (out.float() * grad_out).sum().backward()
    return [out.detach().float(), q.grad, k.grad, v.grad]


@pytest.fixture(params=["kept", "recomputed"])
def probs_for_backward(request, monkeypatch):
    """Both ways the backward gets the probabilities: kept by the forward (small calls) or recomputed from
    the log-sum-exp (above cpu_ops.KEPT_PROBS_BYTES)."""
    if request.param == "recomputed":
        monkeypatch.setattr(cpu_ops, "KEPT_PROBS_BYTES", 0)
    return request.param


@pytest.mark.parametrize("Hq,Hkv,T", [(4, 4, 64), (4, 2, 128), (6, 1, 130)])  # one, two, two odd query blocks
def test_matmul_backward_matches_reference_fp32(Hq, Hkv, T, probs_for_backward):
    (q, k, v), grad_out = _qkv(Hq=Hq, Hkv=Hkv, T=T)
    ours = _grads(cpu_ops.MatmulAttention.apply, q, k, v, grad_out)
    reference = _grads(ops.attention, q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_probabilities_kept_only_for_small_calls(monkeypatch):
    """The forward keeps each query block's probabilities and row sums (two blocks: four tensors more) while
    a call's probabilities fit KEPT_PROBS_BYTES; above it only q, k, v, out and lse."""
    (q, k, v), _ = _qkv(T=128)
    out = cpu_ops.MatmulAttention.apply(*(t.requires_grad_() for t in (q, k, v)))
    assert len(out.grad_fn.saved_tensors) == 5 + 4
    monkeypatch.setattr(cpu_ops, "KEPT_PROBS_BYTES", 2 * 4 * (64 * 64 + 64 * 128) * 4 - 1)  # one byte short
    out = cpu_ops.MatmulAttention.apply(q, k, v)
    assert len(out.grad_fn.saved_tensors) == 5


def test_matmul_backward_bf16_as_accurate_as_flash(probs_for_backward):
    """Under bf16 autocast both differ from the fp32 answer; ours by no more than 1.5x the flash kernel's."""
    (q, k, v), grad_out = _qkv(B=4, T=128, D=32)
    exact = _grads(ops.attention, q, k, v, grad_out)
    flash = _grads(lambda *a: ops.attention(*(t.to(torch.bfloat16) for t in a)), q, k, v, grad_out, autocast=True)
    ours = _grads(lambda *a: cpu_ops.MatmulAttention.apply(*(t.to(torch.bfloat16) for t in a)),
                  q, k, v, grad_out, autocast=True)
    for name, e, f, o in zip(("out", "dq", "dk", "dv"), exact, flash, ours):
        err_flash = ((f - e).norm() / e.norm()).item()
        err_ours = ((o - e).norm() / e.norm()).item()
        assert 0 < err_ours < max(1.5 * err_flash, 1e-3), (name, err_ours, err_flash)


def test_eager_attention_is_the_reference_and_compiled_takes_the_matmuls():
    (q, k, v), grad_out = _qkv(T=128)  # two query blocks
    eager = _grads(cpu_ops.attention, q, k, v, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(eager, _grads(ops.attention, q, k, v, grad_out)))

    compiled = torch.compile(cpu_ops.attention)
    from torch.profiler import profile
    with profile() as prof:
        got = _grads(compiled, q, k, v, grad_out)
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" not in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in names
    assert "aten::bmm" in names
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [64, 128, 130])  # one query block; four equal; four unequal
def test_compiled_inference_takes_the_matmul_forward(T):
    """A scoring pass (no grad) in a compiled graph: the matmul forward, the reference's output."""
    (q, k, v), _ = _qkv(T=T)
    compiled = torch.compile(cpu_ops.attention)
    from torch.profiler import profile
    with torch.inference_mode(), profile() as prof:
        got = compiled(q, k, v)
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in names and "aten::bmm" in names
    torch.testing.assert_close(got, ops.attention(q, k, v), rtol=1e-4, atol=1e-5)


def test_cpu_table_defaults_to_it():
    backend = resolve("cpu", "fp32")
    assert backend.ops.chosen["attention"] == "cpu" and backend.ops.attention is cpu_ops.attention


def test_cpu_table_adamw_is_fused_and_updates_as_foreach_does():
    backend = resolve("cpu", "fp32")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(37, 11, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(4)]
    params = {}
    for name, make in (("fused", backend.ops.adamw), ("foreach", ops.adamw)):
        ps = [torch.nn.Parameter(p.clone()) for p in start]
        opt = make([{"params": ps, "weight_decay": 0.1}], lr=1e-2)
        for step in grads:
            for p, grad in zip(ps, step):
                p.grad = grad.clone()
            opt.step()
        params[name] = (opt, ps)
    assert params["fused"][0].defaults["fused"] and not params["foreach"][0].defaults["fused"]
    for a, b in zip(params["fused"][1], params["foreach"][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(params["fused"][1][0], start[0])  # it did update


def test_cpu_threads(monkeypatch):
    cores = distributed.physical_cores()
    assert 1 <= cores <= len(__import__("os").sched_getaffinity(0))
    assert distributed.choose_cpu_threads({})[0] is None  # alone: torch's own choice stands
    assert distributed.choose_cpu_threads({"TINYFORGE_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}) == (3, "TINYFORGE_THREADS")
    n, why = distributed.choose_cpu_threads({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
    assert n == max(1, cores // 2) and "2 processes" in why
    assert distributed.choose_cpu_threads({"LOCAL_WORLD_SIZE": str(4 * cores)})[0] == 1  # never 0
