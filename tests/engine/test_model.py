import pytest
import torch

from engine.arch import count_params, shapes_for_budget
from engine.config import PRESETS, ModelConfig, model_config
from engine.model import GPT


@pytest.mark.parametrize("kw", [dict(n_kv_head=2), dict(n_kv_head=4, tie_embeddings=True), dict(head_dim=8)])
def test_forward_shapes_and_analytic_param_count(kw):
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_embd=32, n_head=4, block_size=32, **kw)
    model = GPT(cfg)
    idx = torch.randint(0, 97, (3, 11))
    assert model(idx).shape == (3, 11, 97)
    loss = model(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert count_params(cfg).total == model.num_params()


def test_causal_future_tokens_do_not_change_past_logits():
    model = GPT(ModelConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, block_size=16)).eval()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    with torch.no_grad():
        assert torch.equal(model(a)[0, :8], model(b)[0, :8])
        assert not torch.equal(model(a)[0, 8:], model(b)[0, 8:])


def test_paper_presets_shapes_and_embedding_share():
    pro = model_config("pangu-pi-1b-pro")
    assert (pro.n_layer, pro.n_embd, pro.n_head, pro.vocab_size, pro.block_size) == (21, 1792, 14, 48000, 2048)
    assert pro.ffn_hidden % 64 == 0 and abs(pro.ffn_hidden / pro.n_embd - 8 / 3) < 0.05
    base = model_config("pangu-pi-1b")
    # the paper: ~38% of a 1B model in embedding+head at a 100k vocabulary, ~18% at 48k
    assert 0.35 < count_params(base).embedding_share < 0.42
    assert 0.15 < count_params(pro).embedding_share < 0.20


def test_unknown_preset_names_the_field():
    with pytest.raises(ValueError, match="model.preset: unknown preset 'nope'"):
        model_config("nope")


def test_budget_shapes_fit_the_budget():
    shapes = shapes_for_budget(1e9, 48000, tolerance=0.05)
    assert len(shapes) > 3
    assert all(abs(count_params(c).total - 1e9) <= 0.05e9 for c in shapes)
    assert len({c.n_layer for c in shapes}) == len(shapes)
    assert set(PRESETS) >= {"pangu-pi-1b-pro", "pangu-pi-1.5b-pro", "pangu-pi-1b", "micro", "tiny"}
