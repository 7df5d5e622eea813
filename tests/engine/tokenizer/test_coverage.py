"""Compaction by coverage: `compact_coverage` picks the smallest vocabulary whose kept pieces (merge
closure included) cover that share of the large tokenizer's token occurrences; a fixed
`compact_vocab` still decides alone; the stage reports coverage, tokens-per-byte cost and byte-piece
share (checked against an independent encode of the corpus) and warns below 0.95."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm
import yaml

from engine.paths import BUNDLED_CORPUS
from engine.tokenizer import proto as P
from engine.tokenizer.compact import compact_model, plan, size_for_coverage
from engine.tokenizer.corpus import corpus_files, iter_chunks
from engine.tokenizer.spec import TokenizerStageSpec
from tests.conftest import run_cli
from tests.tokenizer_helpers import counts, trained


@pytest.mark.parametrize("large", [2048, 8192])
def test_coverage_picks_the_smallest_size_that_reaches_it(large):
    model = trained("bpe", large)
    m, c = P.load_proto(model), counts(model)
    size = size_for_coverage(m, c, 0.98)
    at, below = plan(m, c, size), plan(m, c, size - 1)
    assert at.size == size < large
    assert at.coverage >= 0.98 > below.coverage  # one piece fewer misses it
    assert at.for_merges > 0  # the merge closure is part of the size ...
    assert at.coverage == pytest.approx(c[at.keep].sum() / c.sum())  # ... and of the coverage
    assert size_for_coverage(m, c, 0.9) < size < size_for_coverage(m, c, 0.995)
    full = size_for_coverage(m, c, 1.0)
    assert plan(m, c, full).coverage == 1.0 > plan(m, c, full - 1).coverage


def test_the_compacted_model_keeps_the_share_it_reports(tmp_path):
    model = trained("bpe", 2048)
    c = counts(model)
    s = compact_model(model, c, None, tmp_path / "c.model", coverage=0.98, log=lambda *a: None)
    old_to_new = np.load(s["id_map_npy"])
    assert spm.SentencePieceProcessor(model_file=s["model"]).get_piece_size() == s["vocab"] == (old_to_new >= 0).sum()
    kept = c[old_to_new >= 0].sum() / c.sum()  # from the id map, not from the plan
    assert s["coverage"] == pytest.approx(kept, abs=1e-6) and kept >= 0.98
    assert (s["size_rule"], s["compact_coverage"], s["compact_vocab"], s["warnings"]) == ("coverage", 0.98, None, [])
    with pytest.raises(ValueError, match=r"compact_coverage \(--coverage\): expected a share in \(0, 1\], got 1.5"):
        compact_model(model, c, None, tmp_path / "d.model", coverage=1.5, log=lambda *a: None)
    with pytest.raises(ValueError, match="give exactly one of the two"):
        compact_model(model, c, 512, tmp_path / "d.model", coverage=0.9, log=lambda *a: None)


def test_a_fixed_size_decides_alone_and_survives_a_dump_reload():
    spec = TokenizerStageSpec(compact_vocab=512)
    assert (spec.compact_vocab, spec.compact_coverage) == (512, None)
    again = TokenizerStageSpec.model_validate(spec.model_dump(mode="json"))  # what the service hands the engine
    assert (again.compact_vocab, again.compact_coverage) == (512, None)
    assert TokenizerStageSpec().compact_coverage == 0.98
    with pytest.raises(ValueError, match="compact_coverage: give either compact_vocab"):
        TokenizerStageSpec(compact_vocab=512, compact_coverage=0.98)  # given explicitly, even at the default
    with pytest.raises(ValueError, match="compact_coverage: give compact_coverage"):
        TokenizerStageSpec(compact_coverage=None)


def independent_cost(model_path, sources) -> tuple[float, float]:
    """Tokens per byte and byte-piece share from encoding the corpus chunks with SentencePiece directly."""
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    chunks = list(iter_chunks(corpus_files(sources)))
    ids = [i for chunk in sp.encode(chunks) for i in chunk]
    n_bytes = sum(len(ch.encode("utf-8")) for ch in chunks)
    return len(ids) / n_bytes, sum(sp.id_to_piece(i).startswith("<0x") for i in ids) / len(ids)


def run_stage_cli(tmp_path, name, **cfg):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"sources": [str(BUNDLED_CORPUS)], "vocab_size": 2048, **cfg}))
    proc = run_cli("tokenizer", "--config", path, "--out", tmp_path / name, check=True)
    run = tmp_path / name
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return proc, json.loads((run / "result.json").read_text())["summary"], events, run


def test_stage_reports_cost_and_warns_below_095(tmp_path):
    # by coverage (the default): the report fields, no warning
    proc, s, events, run = run_stage_cli(tmp_path, "cov")
    assert s["size_rule"] == "coverage" and s["coverage"] >= 0.98 and s["vocab"] < 2048
    tpb, share = independent_cost(run / "compact.model", [str(BUNDLED_CORPUS)])
    tpb_large, share_large = independent_cost(run / "large.model", [str(BUNDLED_CORPUS)])
    assert s["tokens_per_byte"] == pytest.approx(tpb, abs=1e-6)
    assert s["tokens_per_byte_large"] == pytest.approx(tpb_large, abs=1e-6)
    assert s["tokens_per_byte_cost"] == pytest.approx(tpb / tpb_large, abs=1e-5) and s["tokens_per_byte_cost"] > 1
    assert s["byte_fallback_share"] == pytest.approx(share, abs=1e-6)
    assert s["byte_fallback_share_large"] == pytest.approx(share_large, abs=1e-6)
    assert s["byte_fallback_share_large"] < s["byte_fallback_share"]
    assert "tokens per byte" in proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")] and s["warnings"] == []
    assert not [e for e in events if e["event"] == "warning"]
    # a fixed 512 pieces (the old demo): unchanged size, coverage far below 0.95, warned in the log and the record
    proc, s, events, run = run_stage_cli(tmp_path, "fixed", compact_vocab=512)
    assert (s["size_rule"], s["vocab"], s["compact_coverage"]) == ("fixed", 512, None)
    m = P.load_proto(run / "large.model")
    keep = plan(m, np.load(run / "counts.npy"), 512).keep
    assert np.array_equal(np.nonzero(np.load(run / "compact.id_map.npy") >= 0)[0], keep)
    assert s["coverage"] < 0.95 and s["tokens_per_byte_cost"] > 1.3
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and f"keeps {s['coverage']:.2%}" in warned[0] and "below 95%" in warned[0]
    assert [e["message"] for e in events if e["event"] == "warning"] == warned == s["warnings"]


def test_cli_compact_defaults_to_coverage_and_refuses_both(tmp_path):
    model = trained("bpe", 2048)
    proc = run_cli("tokenizer", "compact", "--model", model, "--out", tmp_path / "c.model", check=True)
    s = json.loads((tmp_path / "c.json").read_text())
    assert (s["size_rule"], s["vocab"]) == ("coverage", size_for_coverage(P.load_proto(model), counts(model), 0.98))
    assert s["tokens_per_byte_cost"] > 1 and "tokens per byte" in proc.stderr
    proc = run_cli("tokenizer", "compact", "--model", model, "--vocab", 512, "--coverage", 0.9,
                   "--out", tmp_path / "d.model")
    assert proc.returncode == 2 and "give either --vocab (512, a fixed size) or --coverage (0.9" in proc.stderr
    assert not (tmp_path / "d.model").exists()
