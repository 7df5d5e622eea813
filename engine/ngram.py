"""Unigram and bigram bits-per-byte floors of a tokenised corpus: what a count-based model of the
training split scores on the held-out split. A language model that ends above its tokenizer's bigram
floor is still learning n-gram statistics (the ablation reports both as regime guards).

Scoring follows the engine's evaluation (engine/train.py `evaluate`): every held-out token that has a
predecessor in its shard is a target (eos included, as the model predicts it too; with `seq_len`, exactly
the targets of a full evaluation at that window length), and bits-per-byte is
the targets' summed bits / the UTF-8 bytes those same target ids stand for (the dataset's
`token_bytes.npy`, convention in engine/tokenizer/load.py `token_byte_lengths`).

Estimators (counts from the training split only; pairs never cross a shard boundary):
- unigram: add-k (Laplace for k = 1): p(w) = (c(w) + k) / (N + k V), V the tokenizer's vocabulary;
- bigram: interpolated Kneser-Ney, one discount D (Ney's estimate n1 / (n1 + 2 n2) from the bigram
  count-of-counts unless given):
      p(w | v) = max(c(v w) - D, 0) / c(v) + D N1+(v .) / c(v) * p_cont(w)
      p_cont(w) = max(N1+(. w) - D, 0) / N1+(. .) + D T / N1+(. .) / V
  where c(v) counts v as a context, N1+(v .) the distinct successors of v, N1+(. w) the distinct
  predecessors of w, N1+(. .) the distinct pairs and T the ids with any predecessor. A context never
  seen in training falls back to p_cont; the uniform term keeps every probability above zero, so an
  unseen pair never costs infinite bits.

Counting is sparse (pair key = prev * V + next through np.unique), never a dense V x V matrix: about a
second for 4M tokens and an 8k vocabulary."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from engine.data import load_token_bytes


def _streams(root: Path, meta: dict, split: str) -> list[np.ndarray]:
    return [np.asarray(np.memmap(root / n, dtype=meta["dtype"], mode="r"), dtype=np.int64)
            for n in meta["shards"][split] if (root / n).stat().st_size]


def ngram_floors(data_dir: str | Path, k: float = 1.0, discount: float | None = None,
                 seq_len: int | None = None) -> dict:
    """The unigram and bigram bits-per-byte floors of the dataset prepared in `data_dir` (engine.data.prepare):
    counts from its train split, scored on its held-out (val) split. With `seq_len`, exactly the targets a
    full evaluation at that window length scores (engine.data.TokenData windows; the few tokens after the
    last whole window are left out, as there). Returns {"unigram_bpb", "bigram_bpb", "tokens" and "bytes"
    scored, "train_tokens", "discount", "k"}."""
    root = Path(data_dir)
    meta = json.loads((root / "meta.json").read_text())
    token_bytes = load_token_bytes(root, meta)
    val = _streams(root, meta, "val")
    if seq_len is not None:
        val = [s[: (len(s) - 1) // seq_len * seq_len + 1] for s in val]
    return floors_from_streams(_streams(root, meta, "train"), val, token_bytes, k, discount)


def floors_from_streams(train: list[np.ndarray], val: list[np.ndarray], token_bytes: np.ndarray, k: float = 1.0,
                        discount: float | None = None) -> dict:
    """ngram_floors on token streams (one array per shard) and a per-id byte table (its length is V)."""
    V = len(token_bytes)
    train = [np.asarray(s, dtype=np.int64) for s in train if len(s)]
    val = [np.asarray(s, dtype=np.int64) for s in val if len(s) > 1]
    if not train or not val:
        raise ValueError("ngram_floors: the train split is empty or the held-out split has no token pairs")
    if max(int(s.max()) for s in train + val) >= V or min(int(s.min()) for s in train + val) < 0:
        raise ValueError(f"ngram_floors: token ids outside the byte table's {V} entries")

    # scored targets: each held-out token with a predecessor in its shard
    prev = np.concatenate([s[:-1] for s in val])
    nxt = np.concatenate([s[1:] for s in val])
    n_bytes = int(token_bytes[nxt].sum(dtype=np.int64))
    if n_bytes == 0:
        raise ValueError("ngram_floors: the held-out targets stand for no bytes of text")

    # unigram, add-k
    uni = sum(np.bincount(s, minlength=V) for s in train).astype(np.float64)
    p_uni = (uni[nxt] + k) / (uni.sum() + k * V)

    # bigram, interpolated Kneser-Ney
    keys = np.concatenate([s[:-1] * V + s[1:] for s in train if len(s) > 1])
    if keys.size == 0:
        raise ValueError("ngram_floors: the train split has no token pairs")
    pairs, counts = np.unique(keys, return_counts=True)
    if discount is None:
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.75
    D = float(discount)
    if not 0 < D < 1 or k <= 0:
        raise ValueError(f"ngram_floors: discount must lie in (0, 1) and k be positive (got {D}, {k})")
    ctx = np.bincount(pairs // V, weights=counts, minlength=V)  # c(v) as a context
    succ = np.bincount(pairs // V, minlength=V).astype(np.float64)  # N1+(v .)
    pred = np.bincount(pairs % V, minlength=V).astype(np.float64)  # N1+(. w)
    n_types = float(pairs.size)  # N1+(. .)
    T = float((pred > 0).sum())
    p_cont = np.maximum(pred - D, 0) / n_types + D * T / n_types / V

    q = prev * V + nxt
    at = np.minimum(np.searchsorted(pairs, q), pairs.size - 1)
    c_pair = np.where(pairs[at] == q, counts[at], 0).astype(np.float64)
    c_ctx = ctx[prev]
    seen = c_ctx > 0
    safe = np.where(seen, c_ctx, 1.0)
    p_bi = np.where(seen, np.maximum(c_pair - D, 0) / safe + D * succ[prev] / safe * p_cont[nxt], p_cont[nxt])

    ln2 = math.log(2)
    return {"unigram_bpb": float(-np.log(p_uni).sum() / ln2 / n_bytes),
            "bigram_bpb": float(-np.log(p_bi).sum() / ln2 / n_bytes),
            "tokens": int(nxt.size), "bytes": n_bytes, "train_tokens": int(uni.sum()), "discount": D, "k": k}
