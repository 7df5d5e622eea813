"""The CUDA / Ascend / DeepSpeed paths' logic, on CPU (issue 17): device per rank, fp16 refusal, the
910A operator table, the NPU AdamW fallback, the MFU peak table, the DeepSpeed JSON merge, precision and
offload settings, rms_norm's warps, Liger rope not touching its input, and deterministic resume.
What needs a GPU carries the gpu marker and runs in bench/device_check.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ops_helpers import DEVICE  # noqa: F401,I001  (Triton's interpreter first)

from engine import backend as backend_mod
from engine import distributed
from engine.backend import FP16_REFUSED, npu_defaults, npu_generation, resolve
from engine.parallel import deep_merge, deepspeed_config
from engine.peaks import device_peak, vendor_peak
from engine.spec import TrainSpec
from tests.conftest import REPO as ROOT

BIN = Path(sys.executable).parent


# --- 1. one device per rank, current before the process group -------------------------------------

def test_two_ranks_each_make_their_own_device_current_before_the_process_group(tmp_path):
    out = tmp_path / "ranks.json"
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone",
                           str(ROOT / "tests" / "device_rank_probe.py"), str(out)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted(json.loads(out.read_text()), key=lambda r: r["rank"])
    for rank, r in enumerate(records):
        assert r["local_rank"] == rank and r["device"] == f"cuda:{rank}"
        assert r["calls"] == [["set_device", f"cuda:{rank}"], ["init_process_group", f"cuda:{rank}"]], r


def test_a_rank_without_a_device_is_refused_naming_the_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"local rank 1 has no cuda device .*CUDA_VISIBLE_DEVICES"):
        distributed.bind_device("cuda", 1)
    assert distributed.bind_device("cpu", 3) == torch.device("cpu")


# --- 2. fp16 is refused -----------------------------------------------------------------------------

def test_fp16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="precision: fp16 is not supported") as exc:
        resolve("cpu", "fp16")
    assert str(exc.value) == FP16_REFUSED and "loss scaling" in FP16_REFUSED


def test_fp16_is_refused_at_plan_time_naming_the_field():
    from engine.spec import SpecError, parse
    with pytest.raises(SpecError, match=r"precision: fp16 is not supported \(no loss scaling"):
        parse("train", {"precision": "fp16"})


def test_fp16_from_a_deepspeed_json_is_refused(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"fp16": {"enabled": True}}))
    with pytest.raises(ValueError, match=r"fp16\.enabled is set by the job's precision"):
        deepspeed_config(zero_spec("zero2", ds), 1, "cuda")


# --- 3. 910A gets no A2-only operators --------------------------------------------------------------

@pytest.mark.parametrize("name,generation", [
    ("Ascend910A", "a1"), ("Ascend910B", "a1"), ("Ascend910ProA", "a1"), ("Ascend910ProB", "a1"),
    ("Ascend910PremiumA", "a1"), ("Ascend310P3", "a1"), ("Ascend910B1", "a2+"), ("Ascend910B4", "a2+"),
    ("Ascend910B4-1", "a2+"), ("Ascend910_9391", "a2+"), ("Ascend910_9372", "a2+")])
def test_npu_generation_from_the_device_name(name, generation):
    assert npu_generation(name) == generation


def test_910a_table_uses_the_reference_swiglu_and_attention_and_a2_the_fused_ones(monkeypatch):
    import engine.ops
    import npu_kernels.ops
    import npu_kernels.runtime

    assert npu_defaults("Ascend910A") == {**backend_mod.DEFAULT_IMPLEMENTATIONS["npu"], "swiglu": "torch",
                                          "attention": "torch"}
    assert npu_defaults("Ascend910B2") == backend_mod.DEFAULT_IMPLEMENTATIONS["npu"]
    # resolve() as on an Ascend host, with the runtime faked: the chip's name picks the table
    monkeypatch.setattr(backend_mod, "npu_available", lambda: True)
    monkeypatch.setattr(distributed, "bind_device", lambda kind, rank: torch.device("cpu"))
    for chip, swiglu in (("Ascend910A", engine.ops.swiglu), ("Ascend910B3", npu_kernels.ops.swiglu)):
        monkeypatch.setattr(npu_kernels.runtime, "configure_npu", lambda chip=chip: {"npu_device": chip})
        table = resolve("npu", "fp32").ops
        assert table.swiglu is swiglu, chip
        assert table.rms_norm is npu_kernels.ops.rms_norm  # documented for the Atlas training series too
    # an explicit override still wins on a 910A
    assert resolve("npu", "fp32", {"swiglu": "npu"}).ops.swiglu is npu_kernels.ops.swiglu


# --- 10. NPU AdamW: fused, else foreach ---------------------------------------------------------------

def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]


def _three_steps(opt, params):
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = torch.full_like(p, 0.1 * (step + 1) * (i + 1))
        opt.step()
    return [p.detach().clone() for p in params]


def test_npu_adamw_falls_back_to_foreach_when_the_fused_step_fails(monkeypatch):
    from engine import ops as ref
    from npu_kernels import ops as npu_ops

    def no_kernel(*a, **k):
        raise NotImplementedError("_fused_adamw_ is not implemented for this device")
    monkeypatch.setattr(torch, "_fused_adamw_", no_kernel)
    params, ref_params = _params(), _params()
    opt = npu_ops.adamw([{"params": params, "weight_decay": 0.1}], lr=1e-2)
    got = _three_steps(opt, params)
    want = _three_steps(ref.adamw([{"params": ref_params, "weight_decay": 0.1}], lr=1e-2), ref_params)
    assert all(g["foreach"] and not g["fused"] for g in opt.param_groups)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_npu_adamw_falls_back_when_fused_is_refused_at_construction(monkeypatch):
    from npu_kernels import ops as npu_ops

    def refuse(*a, **k):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
    monkeypatch.setattr(npu_ops, "_FusedOrForeachAdamW", refuse)
    opt = npu_ops.adamw(iter([{"params": _params(), "weight_decay": 0.1}]), lr=1e-2)  # a one-shot iterable
    assert opt.defaults["foreach"] and not opt.defaults["fused"] and len(opt.param_groups[0]["params"]) == 2


def test_npu_adamw_stays_fused_where_the_kernel_works():
    from npu_kernels import ops as npu_ops
    params = _params()
    opt = npu_ops.adamw([{"params": params}], lr=1e-2)
    _three_steps(opt, params)
    assert opt.param_groups[0]["fused"]


# --- 7. MFU against a vendor peak --------------------------------------------------------------------

@pytest.mark.parametrize("name,dtype,flops", [
    ("NVIDIA H200", "bfloat16", 989e12), ("NVIDIA H200 NVL", "bfloat16", 835e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H100 PCIe", "float16", 756e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12), ("NVIDIA A100 80GB PCIe", "bfloat16", 312e12),
    ("NVIDIA B200", "bfloat16", 2250e12), ("Ascend910B2", "bfloat16", 376e12),
    ("Ascend910_9391", "bfloat16", 752e12), ("Ascend910A", "float16", 256e12),
    ("Ascend910A", "bfloat16", None), ("NVIDIA H200", "float32", None), ("NVIDIA GeForce RTX 4090", "bfloat16", None),
])
def test_vendor_peak_table(name, dtype, flops):
    found = vendor_peak(name, dtype)
    assert (found[0] if found else None) == flops


def test_cpu_peak_is_measured_and_says_so():
    flops, source = device_peak("cpu", torch.float32)
    assert flops > 1e8 and source.startswith("measured: 1024x1024 float32 matmul on cpu")


def test_a_cuda_device_in_the_table_uses_the_vendor_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    flops, source = device_peak(torch.device("cuda", 0), torch.bfloat16)
    assert flops == 989e12 and source == "vendor dense bfloat16 peak of NVIDIA H200 SXM: 989 TFLOP/s"


# --- 5. 6. 4. the DeepSpeed JSON --------------------------------------------------------------------

def zero_spec(strategy: str, ds_path=None, **kw) -> TrainSpec:
    parallel = {"strategy": strategy, **({"deepspeed_config": str(ds_path)} if ds_path else {})}
    return TrainSpec.model_validate({"model": {"preset": "micro"}, "batch_size": 16, "micro_batch": 4,
                                     "parallel": parallel, **kw})


def test_deep_merge_keeps_nested_keys():
    assert deep_merge({"a": {"b": 1, "c": {"d": 2}}, "e": 3}, {"a": {"c": {"f": 4}}, "e": 5}) == \
        {"a": {"b": 1, "c": {"d": 2, "f": 4}}, "e": 5}


def test_a_json_that_only_sets_offload_param_keeps_the_stage_and_batch_sizes(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"offload_param": {"device": "cpu"}},
                              "train_batch_size": "auto", "gradient_clipping": 0.5}))
    cfg = deepspeed_config(zero_spec("zero3", ds), 2, "cuda")
    assert cfg["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"}}
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) \
        == (16, 4, 2)
    assert cfg["gradient_clipping"] == 0.5  # what the job config does not own, the file may set


@pytest.mark.parametrize("user,field", [
    ({"zero_optimization": {"stage": 1}}, r"zero_optimization\.stage=1 contradicts the job config \(2\)"),
    ({"train_micro_batch_size_per_gpu": 8}, r"train_micro_batch_size_per_gpu=8 contradicts"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, r"offload_param needs ZeRO stage 3"),
])
def test_a_json_contradicting_the_job_config_is_refused_naming_the_field(tmp_path, user, field):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(user))
    with pytest.raises(ValueError, match=field):
        deepspeed_config(zero_spec("zero2", ds), 1, "cuda")


def test_precision_goes_to_deepspeeds_torch_autocast_section():
    assert deepspeed_config(zero_spec("zero2"), 1, "cuda", torch.bfloat16)["torch_autocast"] == \
        {"enabled": True, "dtype": "bfloat16"}
    assert "torch_autocast" not in deepspeed_config(zero_spec("zero2"), 1, "cpu", None)


def test_optimizer_offload_is_allowed_with_the_client_adamw(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    cfg = deepspeed_config(zero_spec("zero2", ds), 1, "cuda")
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # else DeepSpeed 0.19 refuses a client optimizer


def test_deepspeed_accepts_offload_with_our_client_optimizer_at_initialize(tmp_path, group_of_one_env):
    """deepspeed.initialize itself, as the engine calls it, on the generated config (offload on, on CPU: the
    plan-time check that refuses offload from a CPU job is skipped here, the client-optimizer check is what is
    exercised)."""
    from engine.config import ModelConfig
    from engine.model import GPT
    from engine.ops import adamw
    from engine.parallel import initialize_deepspeed

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    cfg = deepspeed_config(zero_spec("zero2", ds), 1, "cuda")
    distributed.init(distributed.World(), "gloo", single_process_group=True)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, ffn_hidden=48,
                            block_size=16))
    engine, opt, _, _ = initialize_deepspeed(model, adamw(model.parameters(), lr=1e-3), cfg)
    x = torch.randint(0, 64, (4, 8))
    before = model.lm_head.weight.detach().clone()
    for _ in range(cfg["gradient_accumulation_steps"]):
        engine.backward(engine(x, x))
        engine.step()
    assert engine.global_steps == 1 and opt.cpu_offload
    distributed.shutdown()
    assert not torch.equal(model.lm_head.weight.detach(), before)  # the client AdamW stepped on the CPU


# --- 10. rms_norm warps by width, Liger rope leaves its input alone ----------------------------------

@pytest.mark.parametrize("width,warps", [(96, 4), (1024, 4), (1792, 8), (5000, 16), (8192, 16), (40000, 32),
                                         (65536, 32)])
def test_rms_norm_warps_grow_with_the_width(width, warps):
    from cuda_fallback.rms_norm import _blocks
    assert _blocks(width)[2] == warps


def test_rms_norm_wide_rows_still_match_the_reference():
    from cuda_fallback import ops as triton_ops
    from engine import ops as ref
    from tests.ops_helpers import assert_matches_reference
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5000, generator=g).to(DEVICE), torch.randn(5000, generator=g).to(DEVICE)
    assert_matches_reference(lambda x, w: triton_ops.rms_norm(x, w, 1e-5), lambda x, w: ref.rms_norm(x, w, 1e-5),
                             [x.requires_grad_(), w.requires_grad_()], atol=1e-4, rtol=1e-4)


def test_liger_rope_adapter_does_not_rotate_the_callers_tensor(monkeypatch):
    """Liger rotates q in place after a transpose + contiguous (no copy for a projection view): a fake
    with that behaviour stands in for it here (Liger's kernels do not run on CPU)."""
    from cuda_fallback import liger
    from engine import ops as ref

    class FakeLiger:
        @staticmethod
        def liger_rope(q, k, cos, sin):
            for t in (q, k):
                inner = t.transpose(1, 2).contiguous()  # what Liger does; in place when already contiguous
                inner.copy_(ref.rotary(inner.transpose(1, 2), cos[0], sin[0]).transpose(1, 2))
                t.copy_(inner.transpose(1, 2))
            return q, k
    monkeypatch.setattr(liger, "_functional", lambda: FakeLiger)
    T, D = 5, 8
    emb = torch.outer(torch.arange(T).float(), 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)).repeat(1, 2)
    projection = torch.randn(2, T, 3, D)  # [B, T, H, D], viewed as [B, H, T, D] like the model's q
    before = projection.clone()
    out = liger.rotary(projection.transpose(1, 2), emb.cos(), emb.sin())
    assert torch.equal(projection, before)
    torch.testing.assert_close(out, ref.rotary(before.transpose(1, 2), emb.cos(), emb.sin()))


# --- 8. deterministic: true ---------------------------------------------------------------------------

@pytest.fixture
def restore_determinism():
    import os
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.flash_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    torch.backends.cuda.enable_flash_sdp(saved[3])
    torch.backends.cuda.enable_mem_efficient_sdp(saved[4])
    torch.backends.cuda.enable_cudnn_sdp(saved[5])
    if saved[6] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]


def test_deterministic_switch_sets_every_flag_and_the_run_records_it(tmp_path, micro_spec, restore_determinism):
    import os

    from engine.train import train
    spec = micro_spec(deterministic=True, steps=4, checkpoint_every=2, eval_every=4, log_every=2)
    train(spec, tmp_path / "run", show_progress=False, log=lambda *a, **k: None)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["deterministic"] is True and run["device_peak_source"].startswith("measured")


# --- on a GPU (bench/device_check.py runs these) -------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cut_resume(tmp_path, spec, k: int):
    """(final weights of an uninterrupted run, of a run cut after step k and resumed). Each run is a fresh
    `tinyforge train` process: cuBLAS takes its workspace setting when a process first uses it."""
    import shutil

    import yaml

    from engine import checkpoint as ckpt
    from tests.conftest import run_cli
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    for run in ("full", "cut"):
        run_cli("train", "--config", config, "--out", tmp_path / run, check=True)
    for p in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints"):
        if p.name != f"step_{k:08d}":
            shutil.rmtree(p)
    lines = [ln for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= k]
    (tmp_path / "cut" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run_cli("train", "--config", config, "--out", tmp_path / "cut", check=True)
    final = {}
    for run in ("full", "cut"):
        final[run] = ckpt.load(ckpt.list_checkpoints(tmp_path / run / "checkpoints")[-1], ("model",))[1]["model"]
    return final["full"], final["cut"]


def test_deterministic_resume_is_bit_identical_through_the_cli_on_cpu(tmp_path, micro_spec):
    """The same check as the CUDA one below, on the CPU backend (and the helper the device check relies on)."""
    spec = micro_spec(backend="cpu", deterministic=True, checkpoint_every=3, keep_checkpoints=10, steps=6,
                      eval_every=6, log_every=1)
    full, cut = _cut_resume(tmp_path, spec, 3)
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.equal(full[name], cut[name]), name


@pytest.mark.gpu
@needs_gpu
def test_deterministic_resume_is_bit_identical_on_cuda(tmp_path, micro_spec):
    spec = micro_spec(backend="cuda", precision="bf16", deterministic=True, checkpoint_every=5, keep_checkpoints=10,
                      steps=12, eval_every=12)
    full, cut = _cut_resume(tmp_path, spec, 5)
    for name in full:
        assert torch.equal(full[name], cut[name]), name


@pytest.mark.gpu
@needs_gpu
def test_resume_without_the_switch_matches_to_a_tolerance_on_cuda(tmp_path, micro_spec):
    spec = micro_spec(backend="cuda", precision="bf16", checkpoint_every=5, keep_checkpoints=10, steps=12,
                      eval_every=12)
    full, cut = _cut_resume(tmp_path, spec, 5)
    for name in full:
        torch.testing.assert_close(cut[name], full[name], atol=1e-3, rtol=1e-2, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (a Triton launch on a non-current device)")
def test_triton_kernels_run_on_the_bound_device_of_a_second_rank():
    from cuda_fallback import ops as triton_ops
    from engine import ops as ref
    device = distributed.bind_device("cuda", 1)
    try:
        x, w = torch.randn(4, 96, device=device), torch.randn(96, device=device)
        torch.testing.assert_close(triton_ops.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5))
    finally:
        torch.cuda.set_device(0)


@pytest.mark.gpu
@needs_gpu
def test_wide_rms_norm_in_bf16_on_gpu():
    from cuda_fallback import ops as triton_ops
    from engine import ops as ref
    from tests.ops_helpers import assert_matches_reference
    x, w = torch.randn(8, 65536, device="cuda", dtype=torch.bfloat16), torch.randn(65536, device="cuda")
    assert_matches_reference(lambda x, w: triton_ops.rms_norm(x, w, 1e-5), lambda x, w: ref.rms_norm(x, w, 1e-5),
                             [x.requires_grad_(), w.requires_grad_()], atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@needs_gpu
def test_liger_rope_leaves_the_projection_alone_on_gpu():
    pytest.importorskip("liger_kernel", reason="liger-kernel not installed (pip install 'tinyforge[cuda]')")
    from cuda_fallback import liger
    from engine import ops as ref
    T, D = 33, 64
    emb = torch.outer(torch.arange(T).float(), 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)).repeat(1, 2)
    cos, sin = emb.cos().cuda(), emb.sin().cuda()
    projection = torch.randn(2, T, 4, D, device="cuda")
    before = projection.clone()
    out = liger.rotary(projection.transpose(1, 2), cos, sin)
    assert torch.equal(projection, before)
    torch.testing.assert_close(out, ref.rotary(before.transpose(1, 2), cos, sin), atol=1e-5, rtol=1e-5)
