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


def test_rope_tables_are_built_once_and_a_compiled_forward_never_recompiles():
    """The tables used to be filled in by the first forward: inside a compiled call (or inference mode) that
    changed the buffer the graph was guarded on, and the second call compiled again (a ~2 s stall in every
    compiled scoring pass, a second compile in every compiled training run)."""
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, block_size=16)
    model = GPT(cfg)
    assert model.rope_cos.shape == (16, cfg.head_dim)
    idx = torch.randint(0, 64, (2, 16))
    compiled = torch.compile(model, backend="eager")  # dynamo's guards only: no C++ compile needed
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            compiled(idx, idx).backward()
        with torch.inference_mode():
            frozen = torch.compile(lambda i: model(i), backend="eager")
            for _ in range(3):
                frozen(idx)
    # longer than block_size: computed for that call, never stored; the same values as the stored prefix
    cos, sin = model.rope(40, idx.device)
    assert cos.shape[0] == 40 and model.rope_cos.shape[0] == 16
    torch.testing.assert_close(cos[:16], model.rope_cos, rtol=0, atol=0)


def test_meta_device_model_gets_real_rope_tables():
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, block_size=16)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device="cpu")
    model.init_buffers("cpu")
    torch.testing.assert_close(model.rope_cos, GPT(cfg).rope_cos, rtol=0, atol=0)
