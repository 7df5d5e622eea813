"""The exported model outside tinyforge: transformers loads the model and its SentencePiece tokenizer and
generates what the engine generates; `tinyforge generate` samples from the engine checkpoint; lm-eval
(EleutherAI lm-evaluation-harness) runs the shipped tinyforge_mc task on the export, offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, SAMPLE, run_cli

MC_DIR = REPO / "evals" / "lm_eval"
PROMPTS = ["Good morrow, my lord", "这本书", "def __init__(self"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A compact SentencePiece tokenizer, a micro model trained with it, and its Hugging Face export
    (the recipe's tokenizer -> train -> export path, through the real commands)."""
    tmp = tmp_path_factory.mktemp("interop")
    (tmp / "tok.yaml").write_text(yaml.safe_dump({"sources": [str(SAMPLE)], "vocab_size": 2048,
                                                  "compact_vocab": 512}))
    run_cli("tokenizer", "--config", tmp / "tok.yaml", "--out", tmp / "tok", check=True)
    tokenizer = json.loads((tmp / "tok" / "result.json").read_text())
    compact = str(tmp / "tok" / next(a["path"] for a in tokenizer["artifacts"] if a["name"] == "tokenizer"))
    (tmp / "train.yaml").write_text(yaml.safe_dump({
        "model": {"preset": "micro"}, "data": {"sources": [str(SAMPLE)], "tokenizer": compact}, "steps": 60,
        "batch_size": 8, "micro_batch": 8, "precision": "fp32", "eval_every": 60, "eval_batches": 2,
        "checkpoint_every": 60, "log_every": 10}))
    run_cli("train", "--config", tmp / "train.yaml", "--out", tmp / "run", check=True)
    run_cli("export-hf", "--checkpoint", tmp / "run", "--out", tmp / "export", check=True)
    return {"run": tmp / "run", "hf": tmp / "export" / "hf", "tokenizer": compact}


def test_export_ships_the_tokenizer_and_transformers_generates_what_the_engine_does(exported):
    import sentencepiece as spm
    import transformers

    from engine.generate import sample
    from engine.evaluate import load_model

    hf_dir = exported["hf"]
    assert (hf_dir / "tokenizer.model").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=exported["tokenizer"])
    ours, _ = load_model(str(exported["run"]))
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(prompt), prompt  # the same ids as the engine's tokenizer
        assert tok(prompt)["input_ids"] == ids  # no BOS added (the engine trains without one)
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=16, do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, len(ids):].tolist()
        assert new and tok.decode(new, skip_special_tokens=True).strip()  # it wrote some text
        engine_out = sample(ours, torch.tensor([ids]), 16, temperature=0, eos_id=sp.eos_id())
        assert engine_out[0, len(ids):].tolist() == new, prompt  # greedy decoding agrees token for token


def test_tinyforge_generate_writes_a_continuation(exported):
    proc = run_cli("generate", "--checkpoint", exported["run"], "--prompt", PROMPTS[0], "--max-new-tokens", "30",
                   "--seed", "3", check=True)
    text = proc.stdout.rstrip("\n")
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0]) + 5, text
    again = run_cli("generate", "--checkpoint", exported["run"], "--prompt", PROMPTS[0], "--max-new-tokens", "30",
                    "--seed", "3", check=True)
    assert again.stdout == proc.stdout  # seeded


def test_mc_task_file_is_what_the_generator_builds():
    sys.path.insert(0, str(MC_DIR))
    try:
        import make_tinyforge_mc as gen
    finally:
        sys.path.remove(str(MC_DIR))
    items = gen.build()
    committed = [json.loads(line) for line in (MC_DIR / "tinyforge_mc.jsonl").read_text(encoding="utf-8").splitlines()]
    assert items == committed
    assert all(len(x["choices"]) == 4 and len(set(x["choices"])) == 4 and 0 <= x["label"] < 4 for x in items)
    assert {x["lang"] for x in items} == {"en", "zh", "code"}


@pytest.mark.slow
def test_lm_eval_runs_the_shipped_task_on_the_export_offline(exported, tmp_path):
    pytest.importorskip("lm_eval", reason="lm_eval is in the dev and eval extras: pip install -e '.[eval]'")
    n = len((MC_DIR / "tinyforge_mc.jsonl").read_text(encoding="utf-8").splitlines())
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
                           "--model_args", f"pretrained={exported['hf']},dtype=float32",
                           "--tasks", "tinyforge_mc", "--include_path", str(MC_DIR), "--device", "cpu",
                           "--batch_size", "16", "--output_path", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())
    assert results["n-samples"]["tinyforge_mc"] == {"original": n, "effective": n}
    acc = results["results"]["tinyforge_mc"]["acc,none"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert "tinyforge_mc" in proc.stdout and "acc" in proc.stdout  # the summary table
