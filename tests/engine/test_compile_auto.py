"""compile: auto (the default) compiles the training forward only when the estimated run repays the compile
time; a resumed run keeps the decision its checkpoints recorded; the run record says what was decided."""
from __future__ import annotations

import json

import pytest
import torch

from engine import compiling
from engine.spec import TrainSpec

RUN = dict(tokens_per_step=4096, flops_per_token=1e7, peak_flops=1e12, device_type="cpu", autocast_dtype=None,
           strategy="none")


def eager_seconds(steps: int) -> float:
    return steps * RUN["tokens_per_step"] * RUN["flops_per_token"] / compiling.eager_rate("cpu", RUN["peak_flops"])


def test_the_cpu_estimate_counts_the_threads_the_run_computes_with():
    """The ablation's runs train on one thread each, two at a time: their eager estimate is that of one core."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compiling.eager_rate("cpu", RUN["peak_flops"])
        torch.set_num_threads(2)
        two = compiling.eager_rate("cpu", RUN["peak_flops"])
    finally:
        torch.set_num_threads(before)
    assert one == compiling.CPU_EAGER_FLOPS_PER_CORE and two == 2 * one


def test_default_is_auto_and_booleans_still_parse():
    assert TrainSpec().compile == "auto"
    assert TrainSpec.model_validate({"compile": True}).compile is True
    assert TrainSpec.model_validate({"compile": False}).compile is False


@pytest.mark.parametrize("dtype, saving", [(None, compiling.EXPECTED_SAVING),
                                           (torch.bfloat16, compiling.CPU_BF16_SAVING)])
def test_auto_compiles_only_a_long_enough_run(dtype, saving):
    need = compiling.COMPILE_COST_S / saving
    short = int(need / eager_seconds(1) * 0.5)
    long = int(need / eager_seconds(1) * 2)
    on, why, est = compiling.decide("auto", steps=short, **{**RUN, "autocast_dtype": dtype})
    assert not on and why.startswith("auto -> eager") and est < need
    on, why, est = compiling.decide("auto", steps=long, **{**RUN, "autocast_dtype": dtype})
    assert on and why.startswith("auto -> compiled") and est > need and f"saving ~{saving:.0%}" in why


def test_bf16_on_a_cpu_compiles_shorter_runs_than_fp32():
    """compile saves about half of an eager bf16 step on a CPU (casts, unfused element-wise ops) against a
    fifth in fp32, so a run of, say, the demo parent's length compiles in bf16 and stays eager in fp32."""
    steps = int(compiling.COMPILE_COST_S / compiling.CPU_BF16_SAVING / eager_seconds(1) * 1.2)
    assert compiling.decide("auto", steps=steps, **{**RUN, "autocast_dtype": torch.bfloat16})[0] is True
    assert compiling.decide("auto", steps=steps, **RUN)[0] is False
    assert compiling.decide("auto", steps=steps, **{**RUN, "device_type": "cuda",
                                                    "autocast_dtype": torch.bfloat16})[0] is False


def test_explicit_setting_resume_and_zero():
    assert compiling.decide(True, steps=1, **RUN)[0] is True
    assert compiling.decide(False, steps=10**9, **RUN)[0] is False
    assert compiling.decide("auto", steps=10**9, **{**RUN, "strategy": "zero2"})[0] is False
    on, why, _ = compiling.decide("auto", steps=1, resumed=True, **RUN)  # a resume keeps the run's decision
    assert on and "as decided when this run started" in why


def test_cpu_estimate_ignores_a_peak_measured_under_load():
    quiet = compiling.decide("auto", steps=1000, **RUN)[2]
    assert compiling.decide("auto", steps=1000, **{**RUN, "peak_flops": RUN["peak_flops"] / 30})[2] == quiet


def test_no_compiler_means_eager(monkeypatch):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    on, why, _ = compiling.decide("auto", steps=10**9, **RUN)
    assert not on and "no C++ compiler" in why


def test_short_run_records_the_decision(trained_run):
    out, _ = trained_run
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    decision = [e for e in events if e["event"] == "compile"]
    assert decision and decision[0]["enabled"] is False and decision[0]["message"].startswith("auto -> eager"), events
    result = json.loads((out / "result.json").read_text())
    assert result["summary"]["compile"] == {"enabled": False, "first_step_s": None}


def test_compiled_scoring_pass_matches_eager():
    """The rounds' scoring pass compiled (a long pool) gives the eager per-sequence losses up to bf16 rounding."""
    from engine.backend import resolve
    from engine.config import model_config
    from engine.model import GPT
    from engine.rounds.score import sequence_losses

    backend = resolve("cpu", "bf16")
    torch.manual_seed(0)
    model = GPT(model_config("tiny", vocab_size=256, block_size=64), backend.ops).eval()
    x = torch.randint(0, 256, (6, 64))
    y = torch.randint(0, 256, (6, 64))
    eager = sequence_losses(model, x, y, backend)
    compiled = sequence_losses(model, x, y, backend, compiled=True)
    assert eager.shape == compiled.shape == (6,)
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)
    assert not torch.equal(eager[:3], eager[3:])  # six different sequences, not one number


def test_the_demo_parent_compiles_in_bf16_and_its_children_stay_eager(monkeypatch):
    """examples/demo-recipe.yaml on the 2-core CPU it is sized for: the parent (precision auto) is long enough
    to compile when the CPU computes bf16 natively and stays eager in fp32; the child stages stay eager."""
    import yaml

    from engine.arch import flops_per_token
    from engine.config import model_config
    from service.jobspec import validate_spec
    from service.recipe import expand
    from tests.conftest import REPO

    spec = validate_spec(yaml.safe_load((REPO / "examples" / "demo-recipe.yaml").read_text()))
    configs = {name: config for name, _, config, _ in expand(spec.recipe, spec.resources)}
    monkeypatch.setattr(compiling.torch, "get_num_threads", lambda: 2)  # the demo's 2-core machine

    def decide(stage: str, dtype, vocab: int, **child) -> bool:
        config = configs[stage]
        model = config.get("model") or {"preset": "tiny", "overrides": {}}
        cfg = model_config(model["preset"], vocab_size=vocab, **{**model["overrides"], **child})
        return compiling.decide(config.get("compile", "auto"), steps=config["steps"],
                                tokens_per_step=config["batch_size"] * cfg.block_size,
                                flops_per_token=flops_per_token(cfg, cfg.block_size), peak_flops=1e12,
                                device_type="cpu", autocast_dtype=dtype, strategy="none")[0]

    assert configs["parent"]["precision"] == "auto"
    assert decide("parent", torch.bfloat16, spec.recipe.tokenizer["vocab_size"]) is True
    assert decide("parent", None, spec.recipe.tokenizer["vocab_size"]) is False
    child = dict(n_layer=4, n_embd=64, n_head=2, n_kv_head=1, ffn_hidden=192, tie_embeddings=True)
    for stage in ("round1", "scratch"):
        assert configs[stage]["precision"] == "fp32"
        assert decide(stage, None, 1785, **child) is False


@pytest.mark.alone  # make test gives the tests beside each other one thread each
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the varying order needs two threads adding at once")
def test_compiled_cpu_steps_repeat_bit_for_bit(restore_determinism):
    """Inductor's CPU embedding backward adds rows from parallel threads atomically, in a varying order;
    compile_training's switch makes the same compiled step give the same gradient bit for bit, so a compiled
    run and its resume agree. Four token ids over 1,024 positions: every gradient row gets hundreds of adds
    from both threads."""
    from engine.backend import resolve
    from engine.config import model_config
    from engine.model import GPT

    backend = resolve("cpu", "fp32")
    torch.manual_seed(0)
    model = GPT(model_config("micro", vocab_size=64), backend.ops)
    step = compiling.compile_training(model, "cpu")
    x = torch.randint(0, 4, (16, 64))
    grads = []
    for _ in range(4):
        model.zero_grad(set_to_none=True)
        step(x, x).backward()
        grads.append(model.embed.weight.grad.clone())
    assert grads[0][:4].abs().sum() > 0
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
