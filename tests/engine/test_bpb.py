"""Bits-per-byte is normalised by the UTF-8 bytes of exactly the tokens scored: checked against the
decoded text of the scored windows (byte tokenizer and a SentencePiece model trained on the sample
corpus), for a partial and a full evaluation of the same model; and the n-gram floors against a hand
computation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.backend import resolve
from engine.config import model_config, padded_vocab
from engine.data import DataError, TokenData, prepare
from engine.model import GPT
from engine.ngram import floors_from_streams, ngram_floors
from engine.tokenizer.load import ByteTokenizer, load_tokenizer, token_byte_lengths
from engine.train import evaluate
from tests.conftest import SAMPLE

SEQ, MB = 64, 4
# English and Chinese (multi-byte characters, byte-fallback pieces), small enough to evaluate in full quickly
SOURCES = [str(SAMPLE / "en" / "macbeth.txt"), str(SAMPLE / "zh" / "reviews_neg.txt")]


def quiet(*_a, **_k):
    pass


def scored_stream(data: TokenData, n_windows: int) -> np.ndarray:
    """The target ids of windows 0..n-1: windows are consecutive in shard 0, so their targets are the
    contiguous tokens 1 .. n x seq_len of it (checked against the windows themselves)."""
    assert n_windows <= data.per_shard[0]
    stream = np.asarray(data.shards[0][1: n_windows * data.seq_len + 1], dtype=np.int64)
    by_window = np.concatenate([data.window(i)[1:] for i in range(n_windows)]).astype(np.int64)
    assert np.array_equal(stream, by_window)
    return stream


def independent_bpb(model, data: TokenData, n_windows: int) -> float:
    """Summed cross-entropy from the model's logits (not evaluate's loss) over the first n windows."""
    total = 0.0
    with torch.no_grad():
        for s in range(0, n_windows, MB):
            x, y = data.batch(range(s, min(s + MB, n_windows)))
            total += F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="sum").item()
    return total


def model_for(vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config("micro", vocab_size=padded_vocab(vocab))).eval()


def test_byte_table_and_bytes_per_token_exactly_one(tmp_path):
    tok = ByteTokenizer()
    table = token_byte_lengths(tok)
    assert table.tolist() == [1] * 256 + [0, 0, 0]
    root = prepare([str(SAMPLE)], tok, tmp_path, log=quiet)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["token_bytes"] == meta["bytes"]  # every byte of text is one token, eos none
    data = TokenData.open(root, "val", SEQ)
    y = data.batch(range(len(data)))[1]
    not_eos = int((y != tok.eos_id).sum())
    assert 0 < not_eos < y.numel()  # the premise: eos targets are among them
    assert data.target_bytes(y) / not_eos == 1.0
    # whereas the split-wide average counts eos as a token of no bytes
    assert data.mean_bytes_per_token < 1.0


def test_byte_tokenizer_partial_and_full_evaluation_match_their_own_text(tmp_path):
    tok = ByteTokenizer()
    root = prepare(SOURCES, tok, tmp_path, log=quiet)
    val = TokenData.open(root, "val", SEQ)
    model = model_for(tok.vocab_size)
    backend = resolve("cpu", "fp32")
    results = {}
    for name, n_batches in (("partial", 2), ("full", len(val))):
        m = evaluate(model, val, n_batches, MB, backend)
        n = min(len(val), n_batches * MB)
        ids = scored_stream(val, n)
        text_bytes = len(bytes(int(i) for i in ids if i < 256))  # the decoded text, byte for byte
        assert m["tokens"] == n * SEQ and m["bytes"] == text_bytes
        expected = independent_bpb(model, val, n) / math.log(2) / text_bytes
        assert m["bpb"] == pytest.approx(expected, rel=1e-5)
        results[name] = (m, n)
    assert results["partial"][1] == 2 * MB and results["full"][1] == len(val) > 2 * MB
    # the n-gram floors at the same window length score exactly the full evaluation's targets
    floors = ngram_floors(root, seq_len=SEQ)
    assert (floors["tokens"], floors["bytes"]) == (results["full"][0]["tokens"], results["full"][0]["bytes"])


@pytest.fixture(scope="module")
def spm_tok():
    from tests.tokenizer_helpers import trained

    return load_tokenizer(str(trained("bpe", 4000)))


def decoded_bytes(tok, ids) -> int:
    """UTF-8 bytes of decode(ids) as running text: an anchor piece in front takes SentencePiece's removal
    of the leading space of a decoded sequence, so every scored piece counts as it reads mid-text."""
    anchor = [tok.sp.piece_to_id("a")]
    assert tok.sp.id_to_piece(anchor[0]) == "a"
    text = tok.decode(anchor + [int(i) for i in ids])
    assert "\ufffd" not in text, "a byte-fallback character is cut at the edge of the scored text"
    return len(text.encode("utf-8")) - len(tok.decode(anchor).encode("utf-8"))


def test_sentencepiece_table_agrees_with_decoding(spm_tok):
    sp, table = spm_tok.sp, token_byte_lengths(spm_tok)
    assert table.shape == (spm_tok.vocab_size,)
    for i in range(spm_tok.vocab_size):
        if sp.is_control(i) or sp.is_unknown(i):
            assert table[i] == 0  # <s>, </s>: decode to nothing; <unk>: no recoverable text, counted 0
        elif sp.is_byte(i):
            assert table[i] == 1
        else:
            assert table[i] == decoded_bytes(spm_tok, [i]), sp.id_to_piece(i)
    # byte pieces: a character spelled as byte pieces counts its UTF-8 length
    char = "\u9f98"
    pieces = [sp.piece_to_id(f"<0x{b:02X}>") for b in char.encode("utf-8")]
    assert decoded_bytes(spm_tok, pieces) == table[pieces].sum() == 3
    # the dummy prefix: the U+2581 SentencePiece puts before each encoded chunk is a 1-byte space mid-stream
    ids = spm_tok.encode("Hello world")
    assert sp.id_to_piece(ids[0]).startswith("\u2581")
    assert table[ids].sum() == len(" Hello world") == decoded_bytes(spm_tok, ids)


def test_sentencepiece_partial_and_full_evaluation_match_their_own_text(tmp_path, spm_tok):
    root = prepare(SOURCES, spm_tok, tmp_path, log=quiet)
    meta = json.loads((root / "meta.json").read_text())
    # the table over a split is its text plus at most one dummy-prefix space per chunk
    for split in ("train", "val"):
        extra = meta["token_bytes"][split] - meta["bytes"][split]
        assert 0 <= extra <= meta["bytes"][split] / 4096 + 20
    val = TokenData.open(root, "val", SEQ)
    assert len(val.shards) == 1
    model = model_for(spm_tok.vocab_size)
    backend = resolve("cpu", "fp32")
    per_token = {}
    for name, n_batches in (("partial", 2), ("full", len(val))):
        m = evaluate(model, val, n_batches, MB, backend)
        n = min(len(val), n_batches * MB)
        text_bytes = decoded_bytes(spm_tok, scored_stream(val, n))
        assert m["tokens"] == n * SEQ and m["bytes"] == text_bytes
        assert m["bpb"] == pytest.approx(independent_bpb(model, val, n) / math.log(2) / text_bytes, rel=1e-5)
        per_token[name] = m["bytes"] / m["tokens"]
    # the premise of the fix: the first windows' text is not the split's average, so dividing by the
    # split-wide bytes/token (what evaluate did before) gives a different number
    assert abs(per_token["partial"] / per_token["full"] - 1) > 0.01
    assert abs(per_token["partial"] / val.mean_bytes_per_token - 1) > 0.01


def test_ngram_floors_match_a_hand_computation():
    # vocabulary {0: "a", 1: "b", 2: "cc" (2 bytes), 3: eos (0 bytes)}
    token_bytes = np.array([1, 1, 2, 0])
    train = [np.array([0, 1, 0, 1, 0, 2, 3])]
    val = [np.array([0, 1, 2, 1, 3])]
    f = floors_from_streams(train, val, token_bytes, k=1.0, discount=0.5)
    # targets 1, 2, 1, 3: bytes 1 + 2 + 1 + 0
    assert f["tokens"] == 4 and f["bytes"] == 4
    # unigram add-1: train counts a 3, b 2, cc 1, eos 1 (N = 7, V = 4) -> p = (c + 1) / 11
    uni = -(math.log2(3 / 11) + math.log2(2 / 11) + math.log2(3 / 11) + math.log2(2 / 11)) / 4
    assert f["unigram_bpb"] == pytest.approx(uni, rel=1e-12)
    # bigram KN, D = 0.5. train pairs: ab x2, ba x2, ac, c-eos -> 4 types
    # continuation: N1+(. w): a 1 (b), b 1 (a), cc 1 (a), eos 1 (cc); T = 4, types 4
    # p_cont(w) = (1 - 0.5) / 4 + 0.5 * 4 / 4 / 4 = 0.25 for every w
    # contexts: c(a) = 3 with 2 successors, c(b) = 2 with 1, c(cc) = 1 with 1
    p_b_a = (2 - 0.5) / 3 + 0.5 * 2 / 3 * 0.25
    p_c_b = 0 + 0.5 * 1 / 2 * 0.25  # pair b cc unseen
    p_b_c = 0 + 0.5 * 1 / 1 * 0.25  # pair cc b unseen
    p_eos_b = 0 + 0.5 * 1 / 2 * 0.25  # pair b eos unseen
    bi = -(math.log2(p_b_a) + math.log2(p_c_b) + math.log2(p_b_c) + math.log2(p_eos_b)) / 4
    assert f["bigram_bpb"] == pytest.approx(bi, rel=1e-12)
    # an unseen context (eos never precedes anything in train) falls back to p_cont, and an id never
    # seen anywhere (4, in a vocabulary of 5) keeps the uniform share: p_cont(4) = 0.5 * 4 / 4 / 5
    g = floors_from_streams(train, [np.array([3, 4])], np.array([1, 1, 2, 0, 1]), k=1.0, discount=0.5)
    assert g["bigram_bpb"] == pytest.approx(-math.log2(0.1), rel=1e-12)
    assert g["unigram_bpb"] == pytest.approx(-math.log2(1 / 12), rel=1e-12)


def test_ngram_floors_on_a_prepared_dataset(tmp_path):
    root = prepare([str(SAMPLE)], ByteTokenizer(), tmp_path, log=quiet)
    f = ngram_floors(root)
    meta = json.loads((root / "meta.json").read_text())
    assert f["tokens"] == meta["tokens"]["val"] - 1 and f["train_tokens"] == meta["tokens"]["train"]
    # a bigram model of bytes beats a unigram one, which beats 8 bits a byte
    assert 0 < f["bigram_bpb"] < f["unigram_bpb"] < 8
    assert 0 < f["discount"] < 1


def test_a_dataset_prepared_without_the_byte_table_gets_it_from_its_tokenizer(tmp_path):
    root = prepare(SOURCES, ByteTokenizer(), tmp_path, log=quiet)
    table = np.load(root / "token_bytes.npy")
    (root / "token_bytes.npy").unlink()  # as a folder from before the table existed
    assert np.array_equal(TokenData.open(root, "val", SEQ).token_bytes, table)
    assert np.array_equal(np.load(root / "token_bytes.npy"), table)
    (root / "token_bytes.npy").unlink()
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "tokenizer_fingerprint": "something else"}))
    with pytest.raises(DataError, match="delete the folder"):
        TokenData.open(root, "val", SEQ)
