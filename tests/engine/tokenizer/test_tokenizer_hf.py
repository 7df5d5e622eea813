"""The compact tokenizer loads as a Hugging Face Llama tokenizer (transformers 5: LlamaTokenizer
converts a SentencePiece `tokenizer.model` into a byte-fallback BPE) and encodes like SentencePiece."""
from __future__ import annotations

import shutil

import pytest
import sentencepiece as spm

from tests.tokenizer_helpers import SPECIAL, compacted, corpus_lines, trained

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    s = compacted(trained("bpe", 4000), 1200)
    d = tmp_path_factory.mktemp("hf_tokenizer")
    shutil.copyfile(s["model"], d / "tokenizer.model")
    return transformers.LlamaTokenizer.from_pretrained(str(d)), spm.SentencePieceProcessor(model_file=s["model"])


def test_llama_tokenizer_loads_the_compact_model(loaded):
    hf, sp = loaded
    assert len(hf) == sp.get_piece_size() == 1200
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id())
    assert hf.convert_ids_to_tokens(list(range(1200))) == [sp.id_to_piece(i) for i in range(1200)]
    text = f"x {SPECIAL} y"
    assert hf.encode(text, add_special_tokens=False) == sp.encode(text)


def test_llama_tokenizer_encodes_and_decodes_the_sample_corpus_like_sentencepiece(loaded):
    """Every line of the sample corpus (English, Chinese, code) -- except lines that start with
    whitespace: transformers' Metaspace pre-tokenizer adds no dummy prefix to text that already
    starts with a space and strips one on decode, for any Llama SentencePiece tokenizer."""
    hf, sp = loaded
    lines = [line for line in corpus_lines() if not line[0].isspace()]
    assert len(lines) > 5000
    hf_ids = hf(lines, add_special_tokens=False)["input_ids"]
    differ = [line for line, ids in zip(lines, hf_ids) if ids != sp.encode(line)]
    assert differ == []
    assert all(hf.decode(ids) == line for line, ids in zip(lines, hf_ids))
    assert any(sp.id_to_piece(i).startswith("<0x") for ids in hf_ids for i in ids)  # byte fallback exercised
