"""Parameter-matched shapes: given a reference model, the depth x width (x FFN size) that holds the
same total parameter count (engine/arch.py count_params) at another vocabulary or depth. The ablation
computes its arms' shapes with it at run time and records them (tests/engine/ablate/test_ablate.py checks them)."""
from __future__ import annotations

from engine.arch import count_params
from engine.config import ModelConfig, padded_vocab


def match_shape(target: int, vocab: int, n_layer: int, head_dim: int, block_size: int, tie: bool = False,
                ffn_multiple: int = 16, tolerance: float = 0.005) -> ModelConfig:
    """The shape with `n_layer` layers whose total parameters are closest to `target`: width a multiple
    of head_dim (heads = width / head_dim), FFN size a multiple of `ffn_multiple` between 2x and 4x the
    width. Among shapes within `tolerance` of the target, the FFN ratio closest to SwiGLU's 8/3 wins."""
    best, best_key = None, None
    d = head_dim
    while True:
        cfg = None
        for ffn in range(ffn_multiple * -(-2 * d // ffn_multiple), 4 * d + 1, ffn_multiple):
            cfg = ModelConfig(vocab_size=vocab, n_layer=n_layer, n_embd=d, n_head=d // head_dim, ffn_hidden=ffn,
                              block_size=block_size, tie_embeddings=tie)
            err = abs(count_params(cfg).total - target) / target
            key = (err > tolerance, abs(ffn / d - 8 / 3) if err <= tolerance else err)
            if best_key is None or key < best_key:
                best, best_key = cfg, key
        smallest = ModelConfig(vocab_size=vocab, n_layer=n_layer, n_embd=d, n_head=d // head_dim,
                               ffn_hidden=2 * d, block_size=block_size, tie_embeddings=tie)
        if count_params(smallest).total > target * (1 + tolerance):
            return best
        d += head_dim


def shape_dict(cfg: ModelConfig) -> dict:
    """A shape as model overrides (what a train config's model.overrides takes)."""
    return dict(vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim, ffn_hidden=cfg.ffn_hidden,
                block_size=cfg.block_size, tie_embeddings=cfg.tie_embeddings)


def matched_presets(baseline: ModelConfig, compact_vocab: int, deep_layers: int) -> dict[str, ModelConfig]:
    """Arm 2's and arm 3's shapes: the baseline's parameter count at the compact vocabulary, at the
    baseline's depth (the freed parameters widen the body) and at `deep_layers` (deeper and narrower)."""
    target, hd = count_params(baseline).total, baseline.head_dim
    v = padded_vocab(compact_vocab)
    tie = baseline.tie_embeddings
    return {"wide_compact": match_shape(target, v, baseline.n_layer, hd, baseline.block_size, tie),
            "deep_compact": match_shape(target, v, deep_layers, hd, baseline.block_size, tie)}


def check_matched(configs: dict[str, ModelConfig], tolerance: float = 0.05) -> dict[str, float]:
    """Relative difference of each shape's total parameters from the first one; raises beyond tolerance."""
    names = list(configs)
    ref = count_params(configs[names[0]]).total
    diffs = {n: count_params(c).total / ref - 1 for n, c in configs.items()}
    bad = {n: d for n, d in diffs.items() if abs(d) > tolerance}
    if bad:
        raise ValueError("model.preset: parameter counts differ from the baseline's by more than "
                         f"{tolerance:.0%}: " + ", ".join(f"{n} {d:+.1%}" for n, d in bad.items()))
    return diffs
