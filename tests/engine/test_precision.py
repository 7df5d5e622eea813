"""precision: auto (the default) chooses bf16 only where the device computes it natively, says why, and
records it; an explicit bf16 on a CPU without native bf16 still runs, with a warning that names the
slowdown. The capability answer is injected (engine.backend.bf16_native) to cover the other machines."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import engine.backend as backend_mod
from engine.backend import bf16_native, choose_precision, resolve
from engine.spec import TrainSpec


def test_default_precision_is_auto():
    assert TrainSpec().precision == "auto"


def test_this_cpu_gets_what_torch_reports():
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_native("cpu") == native
    backend = resolve("cpu")
    assert backend.autocast_dtype == (torch.bfloat16 if native else None)
    assert backend.describe()["precision"] == ("bfloat16" if native else "fp32")
    assert backend.describe()["precision_choice"].startswith("auto -> bf16" if native else "auto -> fp32")


@pytest.mark.parametrize("native, dtype, text", [(True, torch.bfloat16, "auto -> bf16: cpu computes bf16 natively"),
                                                 (False, None, "auto -> fp32: this CPU has no native bf16")])
def test_auto_on_a_cpu_injected(monkeypatch, native, dtype, text):
    monkeypatch.setattr(backend_mod, "bf16_native", lambda device_type: native)
    backend = resolve("cpu", "auto")
    assert backend.autocast_dtype is dtype
    assert text in backend.describe()["precision_choice"]


def test_explicit_bf16_on_a_cpu_without_it_runs_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(backend_mod, "bf16_native", lambda device_type: False)
    with caplog.at_level(logging.WARNING, logger="engine.backend"):
        backend = resolve("cpu", "bf16")
    assert backend.autocast_dtype is torch.bfloat16
    assert "100x slower" in backend.describe()["precision_choice"]
    assert any("no native bf16" in r.getMessage() and "100x slower" in r.getMessage() for r in caplog.records)


def test_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(backend_mod, "bf16_native", lambda device_type: True)
    assert choose_precision("cpu", "fp32") == (None, "fp32 as configured")
    assert choose_precision("cpu", "bf16") == (torch.bfloat16, "bf16 as configured")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        choose_precision("cpu", "int8")


@pytest.mark.parametrize("name, native, dtype", [("cuda", True, torch.bfloat16), ("cuda", False, None),
                                                 ("npu", True, torch.bfloat16), ("npu", False, None)])
def test_auto_on_accelerators_injected(monkeypatch, name, native, dtype):
    monkeypatch.setattr(backend_mod, "bf16_native", lambda device_type: native)
    chosen, why = choose_precision(name, "auto")
    assert chosen is dtype and why.startswith("auto -> ")


def test_the_run_records_the_choice_and_the_reason(tmp_path, micro_spec, monkeypatch):
    monkeypatch.setattr(backend_mod, "bf16_native", lambda device_type: False)
    lines = []
    spec = micro_spec(backend="cpu", steps=1, batch_size=4, micro_batch=4, seq_len=32, log_every=1, eval_every=1,
                      eval_batches=1, checkpoint_every=1)
    from engine.train import train
    train(spec, tmp_path, show_progress=False, log=lines.append)
    recorded = json.loads((tmp_path / "run.json").read_text())["backend"]
    assert recorded["precision"] == "fp32" and recorded["precision_choice"].startswith("auto -> fp32")
    assert any(line.startswith("precision fp32: auto -> fp32") for line in lines)
