"""Parameter inheritance from a real Hugging Face Llama directory (random weights, saved with
`transformers`, read back through the engine's loading path): every child tensor is the parent's at
the selected indices; keeping everything reproduces the parent; dropping heads / neurons equals
zeroing their o_proj / down_proj columns; a compact tokenizer's rows are kept exactly."""
import json

import numpy as np
import pytest
import torch
import transformers

from engine.hf import load_hf_weights, read_hf_config
from engine.inherit.run import inherit
from engine.inherit.spec import InheritSpec
from engine.model import GPT

VOCAB = 264  # the byte tokenizer (259 ids) calibrates these parents
PARENTS = {
    # grouped-query attention, head_dim 16 != hidden / heads, untied, sharded safetensors
    "gqa": dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
    # tied embeddings, plain multi-head attention, one model.safetensors
    "tied": dict(vocab_size=VOCAB, hidden_size=40, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=12, tie_word_embeddings=True),
}


_SAVED: dict = {}


def saved_parent(kind, tmp_path_factory):
    """(kind, directory, HF state dict under HF names) of a random Llama saved once per session."""
    if kind in _SAVED:
        return _SAVED[kind]
    torch.manual_seed(7)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(max_position_embeddings=64, rms_norm_eps=1e-5,
                                                                   **PARENTS[kind]))
    with torch.no_grad():  # random norm weights too, so that channel slicing of norms is visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp(f"hf_{kind}")
    if kind == "gqa":
        model.save_pretrained(d, max_shard_size="40KB")
        assert (d / "model.safetensors.index.json").is_file()
    else:
        model.save_pretrained(d)  # one file (the pickle format, pytorch_model.bin, is refused)
        assert (d / "model.safetensors").is_file()
    _SAVED[kind] = kind, d, {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _SAVED[kind]


@pytest.fixture(params=list(PARENTS))
def hf_parent(request, tmp_path_factory):
    return saved_parent(request.param, tmp_path_factory)


@pytest.fixture
def gqa_parent(tmp_path_factory):
    return saved_parent("gqa", tmp_path_factory)


def run(parent, out, **kw):
    base = dict(parent=str(parent), eval_batches=0, backend="cpu", seed=3)
    base.update(kw)
    inherit(InheritSpec.model_validate(base), out, log=lambda *a: None)
    return json.loads((out / "report.json").read_text())


def child_tensors(report):
    from engine import checkpoint as ckpt
    manifest, parts = ckpt.load(report["checkpoint"], ("model",))
    return manifest, parts["model"]


def expected_child(sd, plan, head_dim, ffn, tied, vocab_size):
    """The child's tensors computed straight from the HF state dict, name by name."""
    ch = plan["channels"]
    rows = plan["vocab"] if plan["vocab"] is not None else list(range(sd["model.embed_tokens.weight"].shape[0]))

    def heads_rows(heads):
        return [h * head_dim + d for h in heads for d in range(head_dim)]

    def vocab_rows(t):
        out = torch.zeros(vocab_size, t.shape[1])
        out[:len(rows)] = t[rows]
        return out

    out = {"embed.weight": vocab_rows(sd["model.embed_tokens.weight"])[:, ch]}
    for j, i in enumerate(plan["layers"]):
        p, c = f"model.layers.{i}.", f"blocks.{j}."
        q, kv, n = heads_rows(plan["heads"][j]), heads_rows(plan["groups"][j]), plan["neurons"][j]
        out[c + "attn_norm.weight"] = sd[p + "input_layernorm.weight"][ch]
        out[c + "mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"][ch]
        out[c + "attn.q_proj.weight"] = sd[p + "self_attn.q_proj.weight"][q][:, ch]
        out[c + "attn.k_proj.weight"] = sd[p + "self_attn.k_proj.weight"][kv][:, ch]
        out[c + "attn.v_proj.weight"] = sd[p + "self_attn.v_proj.weight"][kv][:, ch]
        out[c + "attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"][ch][:, q]
        out[c + "mlp.gate_up_proj.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"][n][:, ch],
                                                        sd[p + "mlp.up_proj.weight"][n][:, ch]])
        out[c + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"][ch][:, n]
    out["norm.weight"] = sd["model.norm.weight"][ch]
    head = sd["model.embed_tokens.weight"] if tied else sd["lm_head.weight"]
    out["lm_head.weight"] = vocab_rows(head)[:, ch]
    return out


def child_shape(kind):
    # GQA: 2 of 4 query heads in each of the 2 groups; tied: 2 of 4 heads
    return (dict(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_hidden=48) if kind == "gqa"
            else dict(n_layer=2, n_embd=24, n_head=2, n_kv_head=2, ffn_hidden=40))


@pytest.mark.parametrize("width", ["random", "l2", "learnable_nofold"])
def test_every_child_tensor_is_the_parent_at_the_selected_indices(hf_parent, tmp_path, width):
    kind, d, sd = hf_parent
    pcfg = read_hf_config(d)
    extra = {} if width != "learnable_nofold" else dict(  # gates rank only: weights are the parent's, unscaled
        width="learnable", learnable={"steps": 4, "fold": False},
        calib={"sources": ["data/sample/en"], "batches": 1, "micro_batch": 2, "seq_len": 32})
    r = run(d, tmp_path, **{"child": child_shape(kind), "depth": {"method": "uniform"}, "width": width, **extra})
    plan = r["plan"]
    manifest, state = child_tensors(r)
    ccfg = manifest["model_config"]
    assert ccfg["head_dim"] == pcfg.head_dim and ccfg["n_embd"] == child_shape(kind)["n_embd"]
    assert ccfg["tie_embeddings"] == pcfg.tie_embeddings
    assert plan["layers"] == ([0, 3] if kind == "gqa" else [0, 2])
    g = pcfg.n_head // pcfg.n_kv_head
    for heads, groups in zip(plan["heads"], plan["groups"]):  # whole heads, equal count in each kept group
        assert sorted({h // g for h in heads}) == groups
        assert all(sum(h // g == k for h in heads) == ccfg["n_head"] // ccfg["n_kv_head"] for k in groups)
    want = expected_child(sd, plan, pcfg.head_dim, pcfg.ffn_hidden, pcfg.tie_embeddings, ccfg["vocab_size"])
    assert set(state) == set(want)
    for name, t in want.items():
        assert torch.equal(state[name], t), name
    if pcfg.tie_embeddings:  # sliced once and re-tied
        assert state["lm_head.weight"].data_ptr() == state["embed.weight"].data_ptr()
    if width == "random":  # a non-trivial selection: not simply the first channels / neurons
        assert plan["channels"] != list(range(ccfg["n_embd"]))


def test_dropping_whole_kv_groups(gqa_parent, tmp_path):
    kind, d, sd = gqa_parent
    r = run(d, tmp_path, child=dict(n_head=4, n_kv_head=1), width="random")
    plan = r["plan"]
    for heads, groups in zip(plan["heads"], plan["groups"]):
        assert len(groups) == 1 and heads == [groups[0] * 4 + h for h in range(4)]
    _, state = child_tensors(r)
    want = expected_child(sd, plan, 16, 80, False, VOCAB)
    assert all(torch.equal(state[k], v) for k, v in want.items())


def engine_parent(d):
    model = GPT(read_hf_config(d)).eval()
    load_hf_weights(model, d)
    return model


def test_keeping_everything_reproduces_the_parent_exactly(hf_parent, tmp_path):
    kind, d, _ = hf_parent
    r = run(d, tmp_path, depth={"method": "uniform"}, width="activation",
            calib={"sources": ["data/sample/en"], "batches": 1, "micro_batch": 2, "seq_len": 32})
    manifest, state = child_tensors(r)
    parent = engine_parent(d)
    child = GPT(parent.config.__class__.from_dict(manifest["model_config"])).eval()
    child.load_state_dict(state)
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(child(idx), parent(idx))
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        assert (hf(idx).logits - child(idx)).abs().max() < 1e-4


def test_removing_heads_and_neurons_equals_zeroing_their_columns(hf_parent, tmp_path):
    check_equals_zeroing(hf_parent[1], tmp_path, "heads_and_neurons")


def test_removing_whole_groups_equals_zeroing_their_columns(gqa_parent, tmp_path):
    check_equals_zeroing(gqa_parent[1], tmp_path, "whole_group")


def check_equals_zeroing(d, tmp_path, shape):
    pcfg = read_hf_config(d)
    child = (dict(n_head=pcfg.n_head // 2, ffn_hidden=pcfg.ffn_hidden // 2) if shape == "heads_and_neurons"
             else dict(n_head=4, n_kv_head=1, ffn_hidden=pcfg.ffn_hidden - 8))
    r = run(d, tmp_path, child=child, width="l1")
    manifest, state = child_tensors(r)
    plan = r["plan"]
    sliced = GPT(pcfg.__class__.from_dict(manifest["model_config"])).eval()
    sliced.load_state_dict(state)
    zeroed = engine_parent(d)
    D = pcfg.head_dim
    with torch.no_grad():
        for j, block in enumerate(zeroed.blocks):
            for h in set(range(pcfg.n_head)) - set(plan["heads"][j]):
                block.attn.o_proj.weight[:, h * D:(h + 1) * D] = 0
            block.mlp.down_proj.weight[:, sorted(set(range(pcfg.ffn_hidden)) - set(plan["neurons"][j]))] = 0
        idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
        a, b = sliced(idx), zeroed(idx)
    assert (a - b).abs().max() < 1e-5
    assert sliced.num_params() < zeroed.num_params()


@pytest.mark.parametrize("fmt", ["json_list", "json_dict", "npy", "npy_old_to_new"])
def test_compact_tokenizer_child_keeps_exactly_the_parent_rows(hf_parent, tmp_path, fmt):
    kind, d, sd = hf_parent
    rng = np.random.default_rng(0)
    kept = rng.choice(VOCAB, size=40, replace=False).tolist()  # parent ids, in child-id order
    path = tmp_path / ("map.npy" if fmt.startswith("npy") else "map.json")
    if fmt == "json_list":
        path.write_text(json.dumps(kept))
    elif fmt == "json_dict":
        path.write_text(json.dumps({str(old): new for new, old in enumerate(kept)}))
    elif fmt == "npy":
        np.save(path, np.array(kept, dtype=np.int64))
    else:
        old_to_new = np.full(VOCAB, -1, dtype=np.int64)
        old_to_new[kept] = np.arange(len(kept))
        np.save(path, old_to_new)
    r = run(d, tmp_path / "out", vocab={"id_map": str(path)}, child={"vocab_size": 64})  # 24 padding rows
    manifest, state = child_tensors(r)
    assert manifest["model_config"]["vocab_size"] == 64 and r["plan"]["vocab"] == kept
    E = sd["model.embed_tokens.weight"]
    H = E if kind == "tied" else sd["lm_head.weight"]
    assert torch.equal(state["embed.weight"][:40], E[kept])
    assert torch.equal(state["lm_head.weight"][:40], H[kept])
    assert not state["embed.weight"][40:].any()


def test_bad_child_shapes_name_the_field(hf_parent, tmp_path):
    kind, d, _ = hf_parent
    cases = [({"child": {"n_embd": 4096}}, "child.n_embd"),
             ({"child": {"n_layer": 9}}, "child.n_layer"),
             ({"child": {"vocab_size": 50}}, "child.vocab_size"),
             ({"child": {"preset": "nope"}}, "child.preset"),
             ({"depth": {"method": "explicit", "layers": [0, 0]}}, "depth.layers")]
    if kind == "gqa":
        cases.append(({"child": {"n_head": 8, "n_kv_head": 1}}, "child.n_head"))
    for kw, field in cases:
        with pytest.raises(ValueError, match=field):
            run(d, tmp_path, **kw)
