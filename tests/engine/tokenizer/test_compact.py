"""Compaction of real SentencePiece models trained on the sample corpus: round trip, kept-only text
encodes identically through the id map, every kept piece stays producible (checked with the real
SentencePiece encoder), must-keep pieces survive, no-op and too-small sizes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from engine.inherit.vocab import load_id_map
from engine.tokenizer import proto as P
from engine.tokenizer.compact import compact_model
from tests.tokenizer_helpers import SPECIAL, compacted, corpus_lines, corpus_texts, counts, trained

SIZE = 1200


def processor(path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def unproducible(model_path) -> set[str]:
    """Normal pieces that the real SentencePiece encoder does not produce from their own text
    (no dummy prefix, so a piece's text is exactly its surface)."""
    m = P.load_proto(model_path)
    m.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    ids = [i for i, p in enumerate(m.pieces) if p.type == P.NORMAL and len(p.piece) > 1]
    encoded = sp.encode([m.pieces[i].piece.replace("\u2581", " ") for i in ids])
    return {m.pieces[i].piece for i, e in zip(ids, encoded) if e != [i]}


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def case(request):
    # unigram training is slower: a subset of lines and a smaller vocabulary keep it to a few seconds
    model = trained("bpe", 4000) if request.param == "bpe" else trained("unigram", 3000, 6000)
    return model, compacted(model, SIZE)


def test_round_trip_on_the_whole_sample_corpus(case):
    model, s = case
    orig, sp = processor(model), processor(s["model"])
    assert sp.get_piece_size() == SIZE
    old_to_new = np.load(s["id_map_npy"])
    for name, text in corpus_texts().items():
        ids = orig.encode(text)
        assert (old_to_new[ids] < 0).any(), f"{name}: the test needs text whose pieces were removed"
        assert sp.decode(sp.encode(text)) == text, name
    for line in corpus_lines():
        assert sp.decode(sp.encode(line)) == line


def test_kept_only_text_encodes_identically_through_the_id_map(case):
    model, s = case
    orig, sp = processor(model), processor(s["model"])
    old_to_new = np.load(s["id_map_npy"])
    kept_only = 0
    for line in corpus_lines():
        ids = np.asarray(orig.encode(line), dtype=np.int64)
        if ids.size and (old_to_new[ids] >= 0).all():
            kept_only += 1
            assert sp.encode(line) == old_to_new[ids].tolist(), line
    assert kept_only > 200  # lines made only of kept pieces


def test_every_kept_piece_is_still_produced(case):
    model, s = case
    assert s["unreachable"] == []
    assert unproducible(s["model"]) <= unproducible(model)  # nothing newly stranded


def test_bpe_without_the_merge_closure_strands_pieces_and_reports_exactly_them():
    model = trained("bpe", 4000)
    naive = compacted(model, SIZE, closure=False)
    assert naive["kept_for_merges"] == 0
    assert len(naive["unreachable"]) > 20  # the reference scripts' problem, on real text
    assert set(naive["unreachable"]) == unproducible(naive["model"])  # the report agrees with SentencePiece
    closed = compacted(model, SIZE)
    assert closed["kept_for_merges"] > 0 and closed["unreachable"] == []


def test_must_keep_pieces_survive_and_frequent_pieces_are_kept(case):
    model, s = case
    old, new = P.load_proto(model), P.load_proto(s["model"])
    must = {old.pieces[i].piece for ids in P.must_keep(old).values() for i in ids}
    assert len(must) == 3 + 256 + 1
    assert must <= {p.piece for p in new.pieces}
    assert [p.piece for p in new.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    sp = processor(s["model"])
    assert sp.unk_id() == 0 and sp.bos_id() == 1 and sp.eos_id() == 2
    assert sp.encode(f"a {SPECIAL} b", out_type=str).count(SPECIAL) == 1
    c = counts(model)
    normal = [i for i, p in enumerate(old.pieces) if p.type == P.NORMAL]
    top = sorted(normal, key=lambda i: -c[i])[:300]
    kept = {p.piece for p in new.pieces}
    assert all(old.pieces[i].piece in kept for i in top)
    assert s["coverage"] == pytest.approx(sum(c[i] for i, p in enumerate(old.pieces) if p.piece in kept) / c.sum(),
                                          abs=1e-6)


def test_id_map_files_agree_and_load_for_parameter_inheritance(case):
    model, s = case
    old, new = P.load_proto(model), P.load_proto(s["model"])
    js = np.asarray(json.loads(open(s["id_map"]).read())["old_to_new"])
    npy = np.load(s["id_map_npy"])
    assert (js == npy).all() and len(npy) == len(old.pieces)
    for path in (s["id_map"], s["id_map_npy"]):
        new_to_old = load_id_map(path, len(old.pieces))
        assert len(new_to_old) == SIZE
        assert [old.pieces[o].piece for o in new_to_old] == [p.piece for p in new.pieces]


def test_size_at_or_above_the_original_is_a_noop_with_a_message(tmp_path):
    model = trained("bpe", 4000)
    messages = []
    s = compact_model(model, counts(model), 4000, tmp_path / "same.model", log=messages.append)
    assert s["noop"] and "no-op" in messages[0] and "4000" in messages[0]
    assert (tmp_path / "same.model").read_bytes() == model.read_bytes()
    assert (np.load(s["id_map_npy"]) == np.arange(4000)).all()


def test_size_below_the_must_keep_count_names_both_numbers(tmp_path):
    model = trained("bpe", 4000)
    with pytest.raises(ValueError, match=r"compact_vocab.*: 200 is smaller than the 260 pieces that must be kept"):
        compact_model(model, counts(model), 200, tmp_path / "x.model")
    assert not (tmp_path / "x.model").exists()
    with pytest.raises(ValueError, match="counts: 10 entries, the model has 4000"):
        compact_model(model, np.ones(10, dtype=np.int64), 1000, tmp_path / "x.model")
