"""The tokenizer stage and subcommands as real `tinyforge` subprocesses: the recipe's config end to
end (run.json, result.json, the artifacts the next stages read), bad input exits 2 naming the field,
and the size report (table + PNG)."""
from __future__ import annotations

import json

import yaml

from engine.inherit.vocab import load_id_map
from engine.paths import BUNDLED_CORPUS
from engine.tokenizer.report import parse_sizes, vocab_report
from tests.conftest import run_cli
from tests.tokenizer_helpers import counts, trained


def write(tmp_path, cfg: dict, name="stage.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_recipe_stage_trains_counts_and_compacts(tmp_path):
    """What examples/recipe.yaml asks of the stage (the character coverage adapts to 2048 pieces)."""
    cfg = write(tmp_path, {"sources": [str(BUNDLED_CORPUS)], "vocab_size": 2048, "compact_vocab": 512})
    proc = run_cli("tokenizer", "--config", cfg, "--out", tmp_path / "run", check=True)
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["kind"] == "tokenizer"
    result = json.loads((run / "result.json").read_text())
    arts = {a["name"]: run / a["path"] for a in result["artifacts"]}
    assert {"tokenizer", "id_map", "large_tokenizer", "counts"} <= set(arts)
    assert all(p.is_file() for p in arts.values())
    s = result["summary"]
    assert (s["original_vocab"], s["vocab"], s["unreachable"]) == (2048, 512, 0)
    assert len(load_id_map(arts["id_map"], 2048)) == 512
    assert "compacted 2,048 -> 512 pieces" in proc.stderr
    assert json.loads((run / "progress.json").read_text())["phase"] == "done"


def test_bad_input_exits_2_naming_the_field_and_writes_nothing(tmp_path):
    proc = run_cli("tokenizer", "run", "--config", write(tmp_path, {"action": "compact", "vocab_sise": 10}),
                   "--out", tmp_path / "run")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: vocab_sise:")
    assert not (tmp_path / "run").exists()
    proc = run_cli("tokenizer", "--config", write(tmp_path, {"compact_vocab": 512, "compact_coverage": 0.9}),
                   "--out", tmp_path / "run")
    assert proc.returncode == 2 and "compact_coverage: give either compact_vocab (512, a fixed size) or " \
        "compact_coverage (0.9, the smallest size reaching that share), not both" in proc.stderr
    assert not (tmp_path / "run").exists()
    model = trained("bpe", 4000)
    proc = run_cli("tokenizer", "compact", "--model", model, "--vocab", 100, "--out", tmp_path / "c.model")
    assert proc.returncode == 2
    assert "error: compact_vocab (--vocab): 100 is smaller than the 260 pieces that must be kept" in proc.stderr
    proc = run_cli("tokenizer", "train", "--vocab-size", 1000, "--character-coverage", 0.9995,
                   "--out", tmp_path / "t.model")
    assert proc.returncode == 2 and "error: vocab_size: 1000 is smaller than the" in proc.stderr


def test_size_report_table_and_plot(tmp_path):
    model = trained("bpe", 4000)
    r = vocab_report(model, [str(BUNDLED_CORPUS)], tmp_path, parse_sizes("1k,2.5k,99k"), preset="pangu-pi-1b-pro",
                     counts=counts(model), log=lambda *a: None)
    rows = r["rows"]
    assert [row["vocab"] for row in rows] == [1000, 2500, 4000] and r["skipped_sizes"] == [99000]
    cov = [row["coverage"] for row in rows]
    share = [row["embedding_share"] for row in rows]
    tpb = [row["tokens_per_byte"] for row in rows]
    assert cov[0] < cov[1] < cov[2] == 1.0 and share[0] < share[1] < share[2]
    assert tpb[0] > tpb[1] > tpb[2]  # fewer pieces, more tokens per byte
    assert rows[0]["byte_fallback"] > rows[2]["byte_fallback"]
    assert rows[-1]["tokens"] == int(counts(model).sum())
    md = (tmp_path / "report.md").read_text()
    assert "| 4,000 (original) | 100.00% |" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
