import json

import numpy as np

from engine.data import BatchSampler, TokenData, prepare, rank_slice
from engine.tokenizer.load import ByteTokenizer, smallest_dtype


def test_prepare_is_deterministic_split_and_cached(tmp_path, tinyforge_home):
    from tests.conftest import SAMPLE

    tok = ByteTokenizer()
    a = prepare([str(SAMPLE)], tok, tmp_path / "a", log=lambda *_: None)
    b = prepare([str(SAMPLE)], tok, tmp_path / "b", log=lambda *_: None)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokens"]["val"] > 0 and meta["tokens"]["train"] > 10 * meta["tokens"]["val"]
    for split in ("train", "val"):
        assert (a / f"{split}_00000.bin").read_bytes() == (b / f"{split}_00000.bin").read_bytes()
    again = prepare([str(SAMPLE)], tok, tmp_path / "a", log=lambda *_: (_ for _ in ()).throw(AssertionError))
    assert again == a  # cached: no re-tokenisation (the log callback would raise)
    data = TokenData.open(a, "train", 64)
    x, y = data.batch([0, 5])
    assert x.shape == (2, 64) and np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())


def test_documents_end_with_eos(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    out = prepare([str(tmp_path / "c")], ByteTokenizer(), tmp_path / "cache", val_fraction=0.01, log=lambda *_: None)
    ids = np.fromfile(out / "train_00000.bin", dtype=np.uint16).tolist()
    assert ids == list(b"hello") + [257] + list(b"world") + [257]


def test_sampler_is_pure_function_of_step_and_rank_slices_partition():
    s1, s2 = BatchSampler(1000, 16, seed=3), BatchSampler(1000, 16, seed=3)
    steps = [0, 5, 61, 62, 63, 200]
    assert all(np.array_equal(s1.windows(t), s2.windows(t)) for t in reversed(steps))
    epoch0 = np.concatenate([s1.windows(t) for t in range(s1.batches_per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0)  # no repeats within an epoch
    w = s1.windows(7)
    assert np.array_equal(np.concatenate([rank_slice(w, r, 4) for r in range(4)]), w)


def test_dtype_follows_vocab():
    assert smallest_dtype(65536) == np.uint16 and smallest_dtype(65537) == np.uint32
