"""Token counting: parallel streaming encode == one process == the data pipeline's tokenisation;
the vectorised shard count == the text count on the shards engine.data writes; the frequency file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from engine.data import chunk_lines, prepare
from engine.paths import BUNDLED_CORPUS
from engine.tokenizer.corpus import corpus_files, iter_chunks
from engine.tokenizer.count import count_shards, count_text, load_counts, save_counts
from engine.tokenizer.load import SentencePieceTokenizer
from tests.tokenizer_helpers import corpus_texts, counts, trained


def test_streamed_chunks_are_the_data_pipelines_chunks(tmp_path):
    files = corpus_files([str(BUNDLED_CORPUS)])
    expected = [c for f in files for c in chunk_lines(f.read_text(encoding="utf-8"), 4096)]
    assert list(iter_chunks(files, 4096)) == expected
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ("a\nb\n", "c")) + "\n")
    assert list(iter_chunks([jsonl], 1)) == ["a\n", "b\n", "c"]  # chunks never span two documents


def test_parallel_count_equals_one_process_and_a_direct_encode():
    model = trained("bpe", 4000)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    direct = np.zeros(sp.get_piece_size(), dtype=np.int64)
    for text in corpus_texts().values():
        for ids in sp.encode(chunk_lines(text, 4096)):
            np.add.at(direct, ids, 1)
    one = count_text(model, [str(BUNDLED_CORPUS)], workers=1)
    # small batches: many tasks in flight through the bounded queue
    two = count_text(model, [str(BUNDLED_CORPUS)], workers=2, batch_bytes=50_000)
    assert (one.counts == direct).all() and (two.counts == direct).all()
    assert one.n_bytes == two.n_bytes == sum(len(t.encode()) for t in corpus_texts().values())


def test_shard_count_equals_the_text_count_on_the_pipelines_shards(tmp_path):
    model = trained("bpe", 4000)
    tok = SentencePieceTokenizer(model)
    root = prepare([str(BUNDLED_CORPUS)], tok, tmp_path / "datasets", log=lambda *a: None)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    shard = count_shards([str(root)], tok.vocab_size)
    assert shard.tokens == sum(meta["tokens"].values())
    text = counts(model).copy()
    # the pipeline adds one </s> per document part; every other token is the same encode
    assert (np.delete(shard.counts, tok.eos_id) == np.delete(text, tok.eos_id)).all()
    assert shard.counts[tok.eos_id] > text[tok.eos_id]


def test_raw_uint32_shards_across_blocks(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 70_000, size=100_003).astype("<u4")
    ids.tofile(tmp_path / "a.bin")
    ids[:10].tofile(tmp_path / "b.bin")
    c = count_shards([str(tmp_path)], 70_000, "uint32", block=4096)
    assert (c.counts == np.bincount(ids, minlength=70_000) + np.bincount(ids[:10], minlength=70_000)).all()
    with pytest.raises(ValueError, match="shard_dtype"):
        count_shards([str(tmp_path / "a.bin")], 70_000)
    with pytest.raises(ValueError, match=r"shards: .*a.bin holds token id \d+, outside the model's vocabulary of 1000"):
        count_shards([str(tmp_path / "a.bin")], 1000, "uint32")
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a whole number of uint16 tokens"):
        count_shards([str(tmp_path / "odd.bin")], 10, "uint16")
    with pytest.raises(FileNotFoundError, match="shards: .*missing does not exist"):
        count_shards([str(tmp_path / "missing")], 10, "uint16")


def test_frequency_files_round_trip(tmp_path):
    model = trained("bpe", 4000)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    c = counts(model)
    npy, tsv = save_counts(c, tmp_path / "freq", [sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    assert (load_counts(npy, len(c)) == c).all() and (load_counts(tsv, len(c)) == c).all()
    row = tsv.read_text(encoding="utf-8").splitlines()[1 + sp.piece_to_id("\u2581the")].split("\t")
    assert row == [str(sp.piece_to_id("\u2581the")), str(c[sp.piece_to_id("\u2581the")]), "\u2581the"]
    with pytest.raises(ValueError, match="counts: .* has 4000 entries, the model has 10 pieces"):
        load_counts(npy, 10)
