"""The project's Triton kernels against the plain-torch reference, forward and backward, fp32, on
shapes with non-power-of-two hidden sizes and odd sequence lengths. Without a GPU they run under
Triton's interpreter (tests/ops_helpers.py sets TRITON_INTERPRET=1 before the kernels are imported)."""
from __future__ import annotations

import pytest
import torch

from tests.ops_helpers import DEVICE, assert_matches_reference, run_fwd_bwd  # noqa: I001  (sets the interpreter first)

from cuda_fallback import ops as triton_ops
from cuda_fallback.launch import interpreting
from engine import ops as ref
from engine.config import ModelConfig
from engine.model import GPT
from engine.ops import OP_NAMES, REFERENCE, build_table


def randn(*shape, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", [(2, 7, 48), (3, 5, 33), (13, 100), (1, 1, 1000), (4, 2, 1792)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rms_norm_matches_reference(shape, eps):
    x, w = randn(*shape), randn(shape[-1], seed=1)
    assert_matches_reference(lambda x, w: triton_ops.rms_norm(x, w, eps), lambda x, w: ref.rms_norm(x, w, eps), [x, w])


def rope_tables(T, D, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)
    emb = torch.outer(torch.arange(T).float(), inv).repeat(1, 2)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


@pytest.mark.parametrize("B,H,T,D", [(2, 4, 7, 16), (1, 3, 33, 10), (2, 2, 5, 130), (1, 1, 1, 2)])
@pytest.mark.parametrize("layout", ["projection_view", "contiguous"])
def test_rotary_matches_reference(B, H, T, D, layout):
    if layout == "projection_view":  # [B, T, H, D] transposed, as the model's q/k are
        def make(t):
            return t.transpose(1, 2)
        base = randn(B, T, H, D)
    else:
        def make(t):
            return t
        base = randn(B, H, T, D)
    cos, sin = rope_tables(T, D)
    assert_matches_reference(lambda b: triton_ops.rotary(make(b), cos, sin), lambda b: ref.rotary(make(b), cos, sin),
                             [base])


def test_rotary_uses_both_halves_of_arbitrary_tables_and_broadcast_shapes():
    # the kernel must not assume cos/sin halves are duplicated (Liger's does)
    x = randn(2, 3, 9, 12)
    cos, sin = randn(9, 12, requires_grad=False, seed=2), randn(9, 12, requires_grad=False, seed=3)
    assert_matches_reference(lambda x: triton_ops.rotary(x, cos[None, None], sin[None, None]),
                             lambda x: ref.rotary(x, cos, sin), [x])


def test_rotary_rejects_bad_tables_naming_the_field():
    x = randn(1, 2, 5, 8)
    cos, sin = rope_tables(5, 8)
    with pytest.raises(ValueError, match=r"rotary\.cos"):
        triton_ops.rotary(x, cos[:4], sin)
    with pytest.raises(ValueError, match=r"rotary\.sin"):
        triton_ops.rotary(x, cos, sin.clone().requires_grad_())


@pytest.mark.parametrize("shape", [(2, 7, 90), (3, 11, 256), (5, 2), (1, 3, 1, 2 * 173)])
def test_swiglu_matches_reference(shape):
    assert_matches_reference(triton_ops.swiglu, ref.swiglu, [randn(*shape)])


def test_swiglu_rejects_odd_width():
    with pytest.raises(ValueError, match=r"swiglu\.gate_up"):
        triton_ops.swiglu(randn(3, 7))


def ce_case(N, V, C, ignored=(), seed=0, target_dtype=torch.int64):
    h, w = randn(N, C, seed=seed), randn(V, C, seed=seed + 1)
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed)).to(DEVICE, target_dtype)
    targets[list(ignored)] = -100
    return h, w, targets


@pytest.mark.parametrize("N,V,C,chunk", [(37, 101, 24, None), (37, 101, 24, 8), (64, 1000, 33, 1),
                                         (130, 2051, 48, 50)])
def test_fused_linear_cross_entropy_matches_reference(N, V, C, chunk):
    h, w, targets = ce_case(N, V, C, ignored=(0, 5, N - 1))
    assert_matches_reference(lambda h, w: triton_ops.linear_cross_entropy(h, w, targets, chunk_size=chunk),
                             lambda h, w: ref.linear_cross_entropy(h, w, targets), [h, w])


def test_fused_linear_cross_entropy_int32_targets_grad_scale_and_no_grad():
    h, w, targets = ce_case(29, 77, 20, ignored=(3,), target_dtype=torch.int32)
    out, grads, _ = run_fwd_bwd(lambda h, w: triton_ops.linear_cross_entropy(h, w, targets) * 3.0, [h, w],
                                upstream=torch.tensor(1.0))
    ref_out, ref_grads, _ = run_fwd_bwd(lambda h, w: ref.linear_cross_entropy(h, w, targets.long()) * 3.0, [h, w],
                                        upstream=torch.tensor(1.0))
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # eval: loss only, the kernel skips writing gradients
        torch.testing.assert_close(triton_ops.linear_cross_entropy(h, w, targets),
                                   ref.linear_cross_entropy(h, w, targets.long()))


def test_fused_linear_cross_entropy_rejects_out_of_range_targets():
    h, w, targets = ce_case(8, 16, 4)
    targets[2] = 16
    with pytest.raises(ValueError, match=r"linear_cross_entropy\.targets.*\[16\]"):
        triton_ops.linear_cross_entropy(h, w, targets)


@pytest.mark.parametrize("hq,hkv,T", [(4, 4, 9), (4, 2, 17), (6, 1, 5)])
def test_attention_matches_reference(hq, hkv, T):
    q, k, v = randn(2, hq, T, 16), randn(2, hkv, T, 16, seed=1), randn(2, hkv, T, 16, seed=2)
    assert_matches_reference(triton_ops.attention, ref.attention, [q, k, v])


def test_fused_adamw_follows_the_reference_update():
    init = [randn(7, 5, requires_grad=False), randn(5, requires_grad=False, seed=1)]
    params = {name: [torch.nn.Parameter(t.clone()) for t in init] for name in ("fused", "ref")}
    opts = {"fused": triton_ops.OPERATORS["adamw"]([{"params": params["fused"], "weight_decay": 0.1}], lr=1e-2),
            "ref": ref.adamw([{"params": params["ref"], "weight_decay": 0.1}], lr=1e-2)}
    assert opts["fused"].defaults["fused"] is True
    for step in range(3):
        for name in opts:
            for i, p in enumerate(params[name]):
                p.grad = randn(*p.shape, requires_grad=False, seed=10 * step + i)
            opts[name].step()
    for a, b, start in zip(params["fused"], params["ref"], init):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert (a - start).abs().min() > 1e-3  # every entry moved


def test_kernels_refuse_devices_they_cannot_run_on():
    x = torch.empty(2, 4, device="meta")
    with pytest.raises(RuntimeError, match=r"rms_norm: Triton kernels need CUDA tensors"):
        triton_ops.rms_norm(x, torch.empty(4, device="meta"), 1e-5)
    if interpreting():
        with pytest.raises(ValueError, match=r"swiglu: Triton's interpreter computes in fp32 only"):
            triton_ops.swiglu(torch.randn(2, 8, dtype=torch.bfloat16))


def test_tiny_model_trains_the_same_with_triton_kernels_and_reference():
    """A few optimizer steps of a small GPT: every operator from the Triton table vs the reference."""
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_embd=48, n_head=4, n_kv_head=2, ffn_hidden=72, block_size=32)
    triton_table = build_table("cuda", {op: "triton" for op in OP_NAMES})
    batch = torch.randint(0, cfg.vocab_size, (2, 14), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    losses = {}
    for name, table in (("triton", triton_table), ("torch", REFERENCE)):
        torch.manual_seed(0)
        model = GPT(cfg, table).to(DEVICE)
        opt = table.adamw(model.parameters(), lr=3e-3, weight_decay=0.0)
        losses[name] = []
        for _ in range(4):  # the same batch (T = 13, odd): the loss must fall
            loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
    assert losses["triton"][-1] < losses["triton"][0]  # it trains
    torch.testing.assert_close(torch.tensor(losses["triton"]), torch.tensor(losses["torch"]), atol=1e-4, rtol=1e-4)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the interpreter has no bf16)")


def gpu_cases():
    T, D = 65, 64
    cos, sin = rope_tables(T, D)
    h, w, targets = ce_case(300, 5003, 96, ignored=(7,))
    return {
        "rms_norm": (lambda f: lambda x, w: f(x, w, 1e-5), [randn(2, T, 1792), randn(1792)]),
        "rotary": (lambda f: lambda x: f(x.transpose(1, 2), cos, sin), [randn(2, T, 14, D)]),
        "swiglu": (lambda f: f, [randn(2, T, 2 * 4800)]),
        "linear_cross_entropy": (lambda f: lambda h, w: f(h, w, targets), [h, w]),
    }


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("op", ["rms_norm", "rotary", "swiglu", "linear_cross_entropy"])
def test_triton_kernels_in_bf16_on_gpu(op):
    wrap, inputs = gpu_cases()[op]
    inputs = [t.detach().bfloat16().requires_grad_() if op != "linear_cross_entropy" else t for t in inputs]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=op == "linear_cross_entropy"):
        assert_matches_reference(wrap(triton_ops.OPERATORS[op]), wrap(getattr(ref, op)), inputs, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("op", ["rms_norm", "rotary", "swiglu", "linear_cross_entropy"])
def test_liger_alternative_matches_reference_on_gpu(op):
    pytest.importorskip("liger_kernel", reason="liger-kernel not installed (pip install 'tinyforge[cuda]')")
    from cuda_fallback import liger
    wrap, inputs = gpu_cases()[op]
    assert_matches_reference(wrap(liger.OPERATORS[op]), wrap(getattr(ref, op)), inputs, atol=1e-4, rtol=1e-4)
