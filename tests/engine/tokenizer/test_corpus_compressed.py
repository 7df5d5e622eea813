"""Compressed corpora: .xz and .gz text (and JSONL) files are listed and read as their plain text by
the data pipeline and the tokenizer tools, a damaged file is an error naming it, and the shipped
full corpus (data/corpus, xz per file) decompresses to its 14 MB of text in three domains."""
from __future__ import annotations

import gzip
import json
import lzma
import shutil

import pytest

from engine.data import DataError, iter_documents, list_files
from engine.paths import BUNDLED_CORPUS, FULL_CORPUS
from engine.tokenizer.corpus import iter_chunks, iter_sentences, text_size
from engine.tokenizer.count import count_text
from tests.tokenizer_helpers import trained

TEXT = "First line\r\nsecond line, 第二行\n\nthird\rlast without newline"  # newlines of every kind
DOCS = ["one document\nof two lines", "二 documents"]


def compress(path, suffix):
    out = path.with_name(path.name + suffix)
    opener = {".xz": lzma.open, ".gz": gzip.open}[suffix]
    with opener(out, "wb") as f:
        f.write(path.read_bytes())
    return out


@pytest.fixture
def corpora(tmp_path):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for d in (plain, packed):
        d.mkdir()
    (plain / "a.txt").write_bytes(TEXT.encode())
    (plain / "b.py.txt").write_bytes((BUNDLED_CORPUS / "code" / "python_stdlib_sample.py.txt").read_bytes())
    (plain / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    for name, suffix in (("a.txt", ".xz"), ("b.py.txt", ".gz"), ("c.jsonl", ".xz")):
        shutil.move(compress(plain / name, suffix), packed / (name + suffix))
    (packed / "model.bin.xz").write_bytes(lzma.compress(b"\x00\x01"))  # not text inside: not listed
    return plain, packed


def test_compressed_files_read_as_their_text(corpora):
    plain, packed = corpora
    files = list_files([str(packed)])
    assert [f.name for f in files] == ["a.txt.xz", "b.py.txt.gz", "c.jsonl.xz"]
    assert [list(iter_documents(f)) for f in files] == [list(iter_documents(f)) for f in list_files([str(plain)])]
    assert list(iter_documents(packed / "a.txt.xz")) == [TEXT.replace("\r\n", "\n").replace("\r", "\n")]
    assert list(iter_documents(packed / "c.jsonl.xz")) == DOCS
    assert list(iter_chunks(files, 512)) == list(iter_chunks(list_files([str(plain)]), 512))
    assert list(iter_sentences(files)) == list(iter_sentences(list_files([str(plain)])))
    assert [text_size(f) for f in files] == [f.stat().st_size for f in list_files([str(plain)])]


def test_counts_and_tokenizer_training_read_compressed_text(corpora, tmp_path):
    from engine.tokenizer.train import train_tokenizer

    plain, packed = corpora
    model = trained("bpe", 2048)
    a, b = count_text(model, [str(plain)], workers=1), count_text(model, [str(packed)], workers=1)
    assert (a.counts == b.counts).all() and a.n_bytes == b.n_bytes > 0
    m1 = train_tokenizer([str(plain)], tmp_path / "p.model", 400, log=lambda *a: None)
    m2 = train_tokenizer([str(packed)], tmp_path / "q.model", 400, log=lambda *a: None)
    assert m1.read_bytes() == m2.read_bytes()


def test_a_damaged_compressed_file_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.txt.xz"
    bad.write_bytes(lzma.compress("text".encode())[:-8])  # truncated
    with pytest.raises(DataError, match=r"data.sources: .*bad.txt.xz is not a readable .xz file"):
        list(iter_documents(bad))
    worse = tmp_path / "latin1.txt.gz"
    worse.write_bytes(gzip.compress("caf\u00e9".encode("latin-1")))
    with pytest.raises(DataError, match=r"latin1.txt.gz is not UTF-8 text"):
        list(iter_documents(worse))
    with pytest.raises(DataError, match=r"sources: .*bad.txt.xz is not a readable .xz file"):
        list(iter_chunks([bad]))


def test_the_shipped_full_corpus():
    files = list_files([str(FULL_CORPUS)])
    packed = [f for f in files if f.suffix == ".xz"]
    assert {f.parent.name for f in packed} == {"en", "zh", "code"} and len(packed) == 41
    assert [f.name for f in files if f.suffix != ".xz"] == ["README.md"]  # the licence notes, plain
    sizes = {d: sum(len(doc.encode()) for f in packed if f.parent.name == d for doc in iter_documents(f))
             for d in ("en", "zh", "code")}
    assert 4.4e6 < sizes["en"] < 4.7e6 and 7.3e6 < sizes["zh"] < 7.5e6 and 2.5e6 < sizes["code"] < 2.6e6
    assert sum(f.stat().st_size for f in packed) < 4e6  # xz -9: about a quarter
