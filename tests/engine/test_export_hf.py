"""The Hugging Face export loads in transformers with logits equal to the engine's (fp32)."""
import pytest
import torch
import transformers

from engine import checkpoint as ckpt
from engine import hf
from engine.config import ModelConfig
from engine.model import GPT
from tests.conftest import run_cli


@pytest.mark.parametrize("kw", [dict(n_kv_head=2), dict(n_kv_head=4, tie_embeddings=True)])
def test_export_matches_transformers_and_imports_back(tmp_path, kw):
    cfg = ModelConfig(vocab_size=301, n_layer=2, n_embd=48, n_head=4, block_size=64, **kw)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    src = ckpt.save(tmp_path / "ck", 5, {"model": model.state_dict()}, {"model_config": cfg.to_dict()})
    out = hf.export(src, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    idx = torch.randint(0, 301, (2, 40))
    with torch.no_grad():
        ours, theirs = model(idx), ref(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    back = GPT(hf.read_hf_config(out)).eval()
    hf.load_hf_weights(back, out)
    with torch.no_grad():
        assert torch.equal(back(idx), ours)


def test_cli_export_of_a_trained_run(trained_run, tmp_path):
    run, _ = trained_run
    proc = run_cli("export-hf", "--checkpoint", run, "--out", tmp_path / "exp")
    assert proc.returncode == 0, proc.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exp" / "hf")
    assert model.config.num_hidden_layers == 2
    proc = run_cli("import-hf", "--hf-dir", tmp_path / "exp" / "hf", "--out", tmp_path / "imp")
    assert proc.returncode == 0, proc.stderr
    a = ckpt.load(ckpt.list_checkpoints(run / "checkpoints")[-1], ("model",))[1]["model"]
    b = ckpt.load(ckpt.list_checkpoints(tmp_path / "imp")[-1], ("model",))[1]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
