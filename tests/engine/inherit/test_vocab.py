"""A child on a real compact tokenizer (SentencePiece trained here, compacted by engine/tokenizer): the id
map written beside the compact model is found, the child keeps exactly the parent's rows of the kept
tokens, and at full width and depth the child's logits are the parent's at the kept tokens."""
import json

import pytest
import torch

from engine import checkpoint as ckpt
from engine.config import ModelConfig
from engine.inherit.run import inherit
from engine.inherit.spec import InheritSpec
from engine.model import GPT
from tests.conftest import SAMPLE

from engine.tokenizer import compact  # the project's own module: absent must fail, not skip
spm = pytest.importorskip("sentencepiece")


def test_compact_tokenizer_child(tmp_path):
    from engine.tokenizer.count import count_text
    from engine.tokenizer.load import load_tokenizer

    text = SAMPLE / "en" / "macbeth.txt"
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    counts = count_text(str(tmp_path / "sp.model"), [str(SAMPLE / "en" / "julius_caesar.txt")], workers=1).counts
    compact.compact_model(tmp_path / "sp.model", counts, 250, tmp_path / "small.model", log=lambda *a: None)
    old_to_new = json.loads((tmp_path / "small.id_map.json").read_text())["old_to_new"]
    kept = [old for old, new in sorted(((o, n) for o, n in enumerate(old_to_new) if n >= 0), key=lambda p: p[1])]
    small = load_tokenizer(str(tmp_path / "small.model"))
    assert small.vocab_size == len(kept) < 400

    cfg = ModelConfig(vocab_size=400, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, block_size=64)
    torch.manual_seed(0)
    parent = GPT(cfg).eval()
    parent_dir = ckpt.save(tmp_path / "parent", 1, {"model": parent.state_dict()},
                           {"model_config": cfg.to_dict(), "tokenizer": str(tmp_path / "sp.model")})
    spec = InheritSpec(parent=str(parent_dir), vocab={"tokenizer": str(tmp_path / "small.model")}, width="l2",
                       depth={"method": "uniform"}, calib={"sources": [str(SAMPLE / "en")], "seq_len": 32},
                       eval_batches=1, backend="cpu")
    result = inherit(spec, tmp_path / "child", log=lambda *a: None)
    report = json.loads((tmp_path / "child" / "report.json").read_text())
    assert report["vocab"]["id_map"].endswith("small.id_map.json") and report["plan"]["vocab"] == kept
    assert set(result["summary"]) >= {"inherited_loss", "random_init_loss"}  # evaluated with the compact tokenizer
    manifest, parts = ckpt.load(result["summary"]["checkpoint"], ("model",))
    state = parts["model"]
    # held-out bits-per-byte over the bytes of its own windows: what the trainer's evaluate gives on them
    from engine.backend import resolve
    from engine.data import TokenData, prepare
    from engine.paths import state_home
    from engine.train import evaluate
    root = prepare(spec.calib.sources, small, state_home() / "datasets", spec.calib.val_fraction,
                   spec.calib.chunk_bytes, log=lambda *a: None)
    scored = GPT(ModelConfig.from_dict(manifest["model_config"]))
    scored.load_state_dict(state)
    ev = evaluate(scored, TokenData.open(root, "val", 32), 1, spec.calib.micro_batch, resolve("cpu", "fp32"))
    assert result["summary"]["inherited_loss"] == pytest.approx(ev["loss"], rel=1e-5)
    assert result["summary"]["inherited_bpb"] == pytest.approx(ev["bpb"], rel=1e-5)
    assert report["heldout_scored"] == {"tokens": ev["tokens"], "bytes": ev["bytes"]}
    assert manifest["tokenizer"] == str(tmp_path / "small.model")
    assert manifest["model_config"]["vocab_size"] == len(kept)
    assert torch.equal(state["embed.weight"], parent.embed.weight.detach()[kept])
    assert torch.equal(state["lm_head.weight"], parent.lm_head.weight.detach()[kept])

    child = GPT(ModelConfig.from_dict(manifest["model_config"])).eval()
    child.load_state_dict(state)
    ids = small.encode("Fair is foul, and foul is fair: hover through the fog and filthy air.")
    new = torch.tensor([ids])
    old = torch.tensor([[kept[i] for i in ids]])
    with torch.no_grad():
        assert (child(new) - parent(old)[..., kept]).abs().max() < 1e-6
