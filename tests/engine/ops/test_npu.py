"""NPU operators. The argument building for npu_fusion_attention and the runtime configuration are
pure and tested everywhere; the kernels themselves run only where torch_npu and an Ascend device
exist, and skip elsewhere with the reason."""
from __future__ import annotations

import math

import pytest
import torch

from engine import ops as ref
from engine.backend import npu_available
from npu_kernels.fusion_attention import COMPRESSED_MASK_SIZE, causal_mask, fusion_attention_args
from npu_kernels.runtime import HCCL_TIMEOUT_DEFAULTS, hccl_timeouts


@pytest.mark.parametrize("layout,q,k,kw,heads,dim", [
    ("BNSD", (2, 8, 100, 64), (2, 2, 100, 64), {}, 8, 64),
    ("BSND", (2, 100, 14, 128), (2, 100, 14, 128), {}, 14, 128),
    ("BSH", (2, 77, 14 * 128), (2, 77, 2 * 128), dict(q_heads=14, kv_heads=2), 14, 128),
    ("SBH", (77, 2, 8 * 96), (77, 2, 8 * 96), dict(q_heads=8, kv_heads=8), 8, 96),
    ("TND", (10, 4, 32), (10, 2, 32), dict(cu_seqlens=[3, 3, 10]), 4, 32),
])
def test_fusion_attention_args_per_layout(layout, q, k, kw, heads, dim):
    args = fusion_attention_args(q, k, layout, **kw)
    assert args["head_num"] == heads and args["input_layout"] == layout
    assert args["scale"] == pytest.approx(1 / math.sqrt(dim))  # the op's default is 1.0
    assert args["sparse_mode"] == 2  # leftUpCausal with the compressed mask
    assert args["next_tockens"] == 0
    if layout == "TND":
        assert args["actual_seq_qlen"] == args["actual_seq_kvlen"] == [3, 3, 10]
    else:
        assert "actual_seq_qlen" not in args


@pytest.mark.parametrize("q,k,layout,kw,field", [
    ((2, 6, 10, 64), (2, 4, 10, 64), "BNSD", {}, r"attention\.n_kv_head: query heads 6 .* 4"),
    ((2, 8, 10, 64), (2, 8, 10, 32), "BNSD", {}, r"attention\.k: head_dim 32"),
    ((2, 8, 10, 64), (2, 8, 12, 64), "BNSD", {}, r"attention\.k: causal self-attention"),
    ((2, 300, 10, 64), (2, 300, 10, 64), "BNSD", {}, r"attention\.n_head: .* at most 256"),
    ((2, 10, 64), (2, 10, 64), "BSH", {}, r"attention\.q_heads"),
    ((2, 10, 64), (2, 10, 64), "BSH", dict(q_heads=3, kv_heads=1), r"attention\.q_heads"),
    ((10, 4, 32), (10, 4, 32), "TND", {}, r"attention\.cu_seqlens: layout TND needs"),
    ((10, 4, 32), (10, 4, 32), "TND", dict(cu_seqlens=[5, 4, 10]), r"attention\.cu_seqlens: must be"),
    ((10, 4, 32), (10, 4, 32), "TND", dict(cu_seqlens=[5, 9]), r"attention\.cu_seqlens: must be"),
    ((2, 8, 10, 64), (2, 8, 10, 64), "BNSD", dict(cu_seqlens=[10]), r"attention\.cu_seqlens: only for"),
    ((2, 8, 10, 64), (2, 8, 10, 64), "NBSD", {}, r"attention\.layout: unknown layout 'NBSD'"),
    ((2, 8, 10), (2, 8, 10), "BNSD", {}, r"attention\.q: layout BNSD needs a 4-d tensor"),
])
def test_fusion_attention_args_reject_bad_shapes_naming_the_field(q, k, layout, kw, field):
    with pytest.raises(ValueError, match=field):
        fusion_attention_args(q, k, layout, **kw)


def test_compressed_causal_mask_is_fixed_and_true_means_masked():
    mask = causal_mask()
    assert mask.shape == (COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE) == (2048, 2048) and mask.dtype == torch.bool
    assert not mask[5, 5] and not mask[5, 0] and mask[5, 6]  # the future is masked, the diagonal is not
    # the same causal pattern SDPA's is_causal applies (top-left aligned), cut to any length
    T = 37
    assert torch.equal(~mask[:T, :T], torch.ones(T, T, dtype=torch.bool).tril())
    assert causal_mask() is mask  # built once per device


def test_hccl_timeouts_default_keep_user_values_and_reject_bad_ones():
    assert hccl_timeouts({}) == {k: str(v) for k, v in HCCL_TIMEOUT_DEFAULTS.items()}
    assert hccl_timeouts({"HCCL_CONNECT_TIMEOUT": "600"})["HCCL_CONNECT_TIMEOUT"] == "600"
    with pytest.raises(ValueError, match="HCCL_EXEC_TIMEOUT: must be a positive whole number"):
        hccl_timeouts({"HCCL_EXEC_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="HCCL_CONNECT_TIMEOUT"):
        hccl_timeouts({"HCCL_CONNECT_TIMEOUT": "0"})


needs_npu = pytest.mark.skipif(not npu_available(), reason="needs torch_npu and an Ascend NPU (not present here)")


@pytest.mark.npu
@needs_npu
def test_configure_npu_returns_versions_for_run_metadata():
    from npu_kernels.runtime import configure_npu
    info = configure_npu()
    for key in ("torch", "torch_npu", "cann", "npu_device", "bf16_supported", "HCCL_CONNECT_TIMEOUT"):
        assert key in info, key


@pytest.mark.npu
@needs_npu
@pytest.mark.parametrize("op", ["rms_norm", "rotary", "swiglu", "attention", "linear_cross_entropy"])
def test_npu_operator_matches_reference(op):
    from npu_kernels import ops as npu_ops
    from tests.ops_helpers import assert_matches_reference

    dev = torch.device("npu", 0)
    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g).to(dev).requires_grad_()

    B, H, Hkv, T, D = 2, 8, 2, 33, 64
    emb = torch.outer(torch.arange(T).float(), 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)).repeat(1, 2)
    cos, sin = emb.cos().to(dev), emb.sin().to(dev)
    cases = {
        "rms_norm": (lambda x, w: npu_ops.rms_norm(x, w, 1e-5), lambda x, w: ref.rms_norm(x, w, 1e-5),
                     [rnd(B, T, 96), rnd(96)]),
        "rotary": (lambda x: npu_ops.rotary(x.transpose(1, 2), cos, sin),
                   lambda x: ref.rotary(x.transpose(1, 2), cos, sin), [rnd(B, T, H, D)]),
        "swiglu": (npu_ops.swiglu, ref.swiglu, [rnd(B, T, 2 * 96)]),
        # npu_fusion_attention computes in fp16/bf16 internally: compare in bf16 with a loose tolerance
        "attention": (lambda q, k, v: npu_ops.attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float(),
                      lambda q, k, v: ref.attention(q, k, v), [rnd(B, H, T, D), rnd(B, Hkv, T, D), rnd(B, Hkv, T, D)]),
        "linear_cross_entropy": (lambda h, w: npu_ops.linear_cross_entropy(h, w, targets),
                                 lambda h, w: ref.linear_cross_entropy(h, w, targets), [rnd(B * T, 64), rnd(1000, 64)]),
    }
    targets = torch.randint(0, 1000, (B * T,), generator=g).to(dev)
    fn, reference, inputs = cases[op]
    tol = 3e-2 if op == "attention" else 1e-4
    assert_matches_reference(fn, reference, inputs, atol=tol, rtol=tol)
