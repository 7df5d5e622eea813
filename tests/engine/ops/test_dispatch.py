"""Operator dispatch: per-backend defaults, per-operator overrides (from code and from a job's
config), errors that name the field, and what a run records about the operators it used."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from tests.ops_helpers import DEVICE  # noqa: F401,I001  (puts Triton in interpreter mode first)

import cuda_fallback.ops
import engine.chunked_ops
import engine.ops
from engine.backend import DEFAULT_IMPLEMENTATIONS, resolve
from engine.ops import OP_NAMES, build_table, load_operator
from engine.run_record import read_metrics
from engine.spec import TrainSpec
from engine.train import train


def test_one_operator_switched_back_to_reference_on_top_of_cuda_defaults():
    chosen = {**DEFAULT_IMPLEMENTATIONS["cuda"], "rms_norm": "torch"}
    table = build_table("cuda", chosen)
    assert table.rms_norm is engine.ops.rms_norm
    for op in set(OP_NAMES) - {"rms_norm", "adamw"}:
        assert getattr(table, op) is cuda_fallback.ops.OPERATORS[op], op
    assert table.adamw is engine.ops.fused_adamw
    assert table.chosen == chosen and table.chosen["rms_norm"] == "torch"


def test_resolve_cpu_with_an_override_records_it():
    backend = resolve("cpu", "fp32", {"attention": "torch"})
    assert backend.ops.attention is engine.ops.attention
    assert backend.ops.linear_cross_entropy is engine.chunked_ops.linear_cross_entropy  # the CPU default stays
    assert backend.ops.rms_norm is engine.ops.rms_norm
    described = backend.describe()
    assert described["ops"] == {**{op: "torch" for op in OP_NAMES}, "linear_cross_entropy": "chunked", "adamw": "cpu"}
    assert described["backend"] == "cpu" and described["precision"] == "fp32"


def test_unknown_operator_names_the_field():
    with pytest.raises(ValueError, match=r"ops: unknown operator\(s\) \['rmsnorm'\]"):
        resolve("cpu", "fp32", {"rmsnorm": "torch"})


def test_unknown_implementation_names_the_field():
    with pytest.raises(ValueError, match=r"ops\.swiglu: unknown implementation 'cutlass'"):
        resolve("cpu", "fp32", {"swiglu": "cutlass"})


def test_implementation_without_that_operator_names_the_field():
    with pytest.raises(ValueError, match=r"ops\.rms_norm: implementation 'chunked' does not provide 'rms_norm'"):
        load_operator("chunked", "rms_norm")


def test_job_config_rejects_bad_operator_settings_naming_the_field():
    with pytest.raises(ValidationError, match=r"ops\.rms_norm"):
        TrainSpec.model_validate({"ops": {"rms_norm": "bogus"}})
    with pytest.raises(ValidationError, match=r"ops\.rmsnorm"):
        TrainSpec.model_validate({"ops": {"rmsnorm": "torch"}})


def test_backends_that_are_absent_fail_clearly():
    with pytest.raises(RuntimeError, match="npu requested"):
        resolve("npu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda requested"):
            resolve("cuda")


def test_npu_table_loads_anywhere_and_fails_only_when_called():
    table = build_table("npu", DEFAULT_IMPLEMENTATIONS["npu"])  # no torch_npu import at build time
    assert table.linear_cross_entropy is engine.chunked_ops.linear_cross_entropy
    from engine.backend import npu_available
    if not npu_available():
        with pytest.raises(RuntimeError, match=r"swiglu: needs torch_npu"):
            table.swiglu(torch.randn(2, 8))


def test_job_config_switches_one_operator_back_and_the_run_records_it(tmp_path, micro_spec):
    """A job on the Triton table with rms_norm switched back to torch from its config; the
    run's metadata names every operator's implementation, and the losses match an all-reference run."""
    runs = {}
    reference = {op: "torch" for op in OP_NAMES}  # explicit: the CPU default loss is the chunked one
    for name, ops in (("mixed", {**{op: "triton" for op in OP_NAMES}, "rms_norm": "torch"}), ("reference", reference)):
        spec = micro_spec(backend="cpu", precision="fp32", ops=ops, steps=2, batch_size=4, micro_batch=4,
                          seq_len=32, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2)
        out = tmp_path / name
        train(spec, out, show_progress=False, log=lambda *a, **k: None)
        runs[name] = (json.loads((out / "run.json").read_text()), read_metrics(out))
    recorded = runs["mixed"][0]["backend"]["ops"]
    assert recorded == {**{op: "triton" for op in OP_NAMES}, "rms_norm": "torch"}
    assert runs["reference"][0]["backend"]["ops"] == {op: "torch" for op in OP_NAMES}
    losses = {name: [m["loss"] for m in metrics if m.get("split") == "train"] for name, (_, metrics) in runs.items()}
    assert len(losses["mixed"]) == 2
    torch.testing.assert_close(torch.tensor(losses["mixed"]), torch.tensor(losses["reference"]), atol=1e-4, rtol=1e-4)
