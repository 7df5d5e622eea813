"""Depth and width scores pick what they should: positional layer choices, a layer that is exactly the
identity scores zero on block influence and loss rise, dead heads / neurons / channels score lowest on
every weight- and data-driven metric, grouped-query head selection, and learnable gates that reach
their sparsity targets and fold into the weights exactly."""
import pytest
import torch

from engine import checkpoint as ckpt
from engine.config import ModelConfig, replace
from engine.inherit import depth
from engine.inherit.learnable import HardConcrete, attach, fold_values, train_gates
from engine.inherit.plan import Plan, make_plan, select_heads
from engine.inherit.run import inherit, materialise, mean_loss, token_windows
from engine.inherit.slicing import child_state, load_child
from engine.inherit.source import open_parent
from engine.inherit.spec import CalibSpec, InheritSpec, LearnableSpec
from engine.inherit.stream import StreamedParent
from engine.model import GPT
from tests.conftest import SAMPLE

CFG = ModelConfig(vocab_size=264, n_layer=4, n_embd=32, n_head=4, n_kv_head=4, ffn_hidden=48, block_size=64)
CALIB = CalibSpec(sources=[str(SAMPLE / "en")], batches=2, micro_batch=2, seq_len=32)


def save_parent(tmp_path, model) -> str:
    return str(ckpt.save(tmp_path / "parent", 1, {"model": model.state_dict()},
                         {"model_config": model.config.to_dict(), "tokenizer": "byte"}))


@pytest.fixture(scope="module")
def batches():
    return token_windows(CALIB, "byte", "train", 2, 0, 264, log=lambda *a: None)[0]


def test_positional_depth():
    assert depth.positional("uniform", 8, 4) == [0, 2, 5, 7]
    assert depth.positional("ends", 8, 4) == [0, 1, 6, 7]
    assert depth.positional("ends", 8, 4, first=1) == [0, 5, 6, 7]
    assert depth.positional("first", 8, 3) == [0, 1, 2]
    assert depth.positional("last", 8, 3) == [5, 6, 7]
    assert depth.positional("uniform", 5, 5) == [0, 1, 2, 3, 4]


def test_identity_layer_scores_zero_and_is_dropped(tmp_path, batches):
    torch.manual_seed(0)
    model = GPT(replace(CFG, init_std=0.2)).eval()
    with torch.no_grad():  # layer 2 writes nothing into the residual stream: it is the identity
        model.blocks[2].attn.o_proj.weight.zero_()
        model.blocks[2].mlp.down_proj.weight.zero_()
    source = open_parent(save_parent(tmp_path, model))
    stream = StreamedParent(source)
    inputs, targets = [x for x, _ in batches], [y for _, y in batches]
    bi = depth.block_influence(stream, inputs)
    assert abs(bi[2]) < 1e-6 and min(bi[i] for i in (0, 1, 3)) > 1e-3
    rise, base = depth.loss_rise(stream, inputs, targets)
    assert rise[2] == 0.0 and all(abs(rise[i]) > 1e-4 for i in (0, 1, 3))
    with torch.no_grad():  # the one-pass multi-stream loss rise equals a model built without that layer
        full = sum(model(x, y).item() for x, y in batches) / len(batches)
        assert abs(full - base) < 1e-5
        assert abs(mean_loss(stream, batches, "cpu", layers=range(4)) - full) < 1e-5
        for i in (0, 3):
            cut = GPT(replace(CFG, n_layer=3)).eval()
            cut.load_state_dict(child_state(source, Plan.full_width(CFG, [k for k in range(4) if k != i]),
                                            CFG, replace(CFG, n_layer=3)))
            skipped = sum(cut(x, y).item() for x, y in batches) / len(batches)
            assert abs(skipped - base - rise[i]) < 1e-5
    for method, want in (("block_influence", [0, 1, 3]), ("loss_rise", depth.top_layers(rise, 3))):
        spec = InheritSpec(parent=str(source.path), child={"n_layer": 3}, depth={"method": method}, width="l2",
                           calib=CALIB, eval_batches=0, backend="cpu")
        assert inherit(spec, tmp_path / method, log=lambda *a: None)["summary"]["layers"] == want


@pytest.mark.parametrize("metric", ["l1", "l2", "taylor", "activation"])
def test_dead_head_neuron_and_channel_score_lowest_and_are_dropped(tmp_path, batches, metric):
    torch.manual_seed(1)
    model = GPT(CFG).eval()
    D, H, C = CFG.head_dim, 2, 5  # head 2, neuron 7 of layer 1 and hidden channel 5 do nothing
    with torch.no_grad():
        b = model.blocks[1]
        for proj in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj):
            proj.weight[H * D:(H + 1) * D] = 0
        b.attn.o_proj.weight[:, H * D:(H + 1) * D] = 0
        b.mlp.gate_up_proj.weight[[7, 7 + CFG.ffn_hidden]] = 0
        b.mlp.down_proj.weight[:, 7] = 0
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p[C] = 0
            elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_up_proj.weight")) \
                    or name in ("embed.weight", "lm_head.weight"):
                p[:, C] = 0
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p[C] = 0
    parent = save_parent(tmp_path, model)
    spec = InheritSpec(parent=parent, child={"n_head": 3, "ffn_hidden": 40, "n_embd": 28}, depth={"method": "first"},
                       width=metric, calib=CALIB, eval_batches=0, backend="cpu")
    from engine.inherit.report import load
    inherit(spec, tmp_path / "out", log=lambda *a: None)
    r = load(tmp_path / "out")
    layer1 = r["width"]["layers"][1]
    assert H not in layer1["heads"] and min(layer1["all_head_scores"]) == layer1["all_head_scores"][H] == 0
    assert 7 not in r["plan"]["neurons"][1] and C not in r["plan"]["channels"]


def test_grouped_query_head_selection():
    parent = ModelConfig(vocab_size=8, n_layer=1, n_embd=64, n_head=8, n_kv_head=2)
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.5, 0.4, 0.6, 0.3])  # group 0: heads 0-3, group 1: 4-7
    # keep both groups, 2 query heads in each (Minitron)
    heads, groups = select_heads(scores, parent, replace(parent, n_head=4, n_kv_head=2))
    assert (heads, groups) == ([1, 2, 4, 6], [0, 1])
    # drop a whole group: the one whose heads score higher survives, with all its 4 heads
    heads, groups = select_heads(scores, parent, replace(parent, n_head=4, n_kv_head=1))
    assert (heads, groups) == ([0, 1, 2, 3], [0])
    # both at once: one group, 2 heads
    heads, groups = select_heads(scores, parent, replace(parent, n_head=2, n_kv_head=1))
    assert (heads, groups) == ([1, 2], [0])


def test_hard_concrete_starts_at_its_keep_probability():
    gate = HardConcrete((1000,), init_keep=0.9, temperature=2 / 3)
    assert abs(gate.keep_prob().mean().item() - 0.9) < 0.01
    torch.manual_seed(0)
    assert abs((gate.sample() > 0).float().mean().item() - 0.9) < 0.04


@pytest.fixture(scope="module")
def gqa_parent(tmp_path_factory):
    torch.manual_seed(2)
    cfg = replace(CFG, n_head=4, n_kv_head=2, tie_embeddings=True)
    return open_parent(save_parent(tmp_path_factory.mktemp("gqa"), GPT(cfg)))


def test_learnable_gates_reach_their_sparsity_targets(gqa_parent, batches):
    model = materialise(gqa_parent, [0, 1, 2, 3], "cpu")
    targets = {"heads": 0.5, "neurons": 0.5, "channels": 0.25}
    torch.manual_seed(0)
    _, summary = train_gates(model, batches, targets, LearnableSpec(steps=200, ramp_frac=0.5, lr=0.1), "cpu",
                             log=lambda *a: None)
    final = summary["final"]
    assert all(abs(final[k] - t) < 0.06 for k, t in targets.items()), final


@pytest.mark.parametrize("prune", [False, True])
def test_learnable_masks_fold_into_the_weights_exactly(gqa_parent, batches, prune):
    """The sliced child computes what the gated parent computes: all kept (prune False), or with the
    dropped heads / neurons gated to zero (prune True; hidden channels kept, since removing a channel
    also changes the RMS norm's mean, which zero gating does not)."""
    cfg = gqa_parent.config
    layers = [0, 1, 2, 3]
    model = materialise(gqa_parent, layers, "cpu")
    torch.manual_seed(0)
    gates, _ = train_gates(model, batches, {"heads": 0.5, "neurons": 0.5, "channels": 0.25},
                           LearnableSpec(steps=20), "cpu", log=lambda *a: None)
    child_cfg = replace(cfg, n_head=2, ffn_hidden=24) if prune else cfg
    fold, z = fold_values(gates, layers, child_cfg, cfg)
    la = {k: v.detach() for k, v in gates.scores().items()}
    plan = make_plan(layers, la["heads"], la["neurons"], la["channels"], cfg, child_cfg, None)
    values = {k: v.float().clone() for k, v in z.items()}
    for j in range(len(layers)):
        values["heads"][j, sorted(set(range(cfg.n_head)) - set(plan.heads[j]))] = 0
        values["neurons"][j, sorted(set(range(cfg.ffn_hidden)) - set(plan.neurons[j]))] = 0
    assert (z["channels"] < 1).any() and (z["heads"] < 1).any()  # the gates moved: folding is not a no-op
    child = load_child(child_state(gqa_parent, plan, cfg, child_cfg, fold), child_cfg).eval()
    model.eval()
    for h in attach(model, values):
        pass
    x = batches[0][0]
    with torch.no_grad():
        assert (child(x) - model(x)).abs().max() < 1e-4
