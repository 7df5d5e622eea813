"""Architecture arithmetic: parameter counts, FLOPs per token, training memory, and the shapes
that fit a parameter budget (the paper's depth-versus-width study). Imports torch only where it measures,
so that spec validation (engine/spec.py, also run by the service) can use the arithmetic."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from engine.config import ModelConfig, ffn_size


@dataclass
class ParamCount:
    embedding: int  # input embedding + output head (once if tied)
    body: int  # attention, MLP and norms

    @property
    def total(self) -> int:
        return self.embedding + self.body

    @property
    def embedding_share(self) -> float:
        return self.embedding / self.total


def count_params(cfg: ModelConfig) -> ParamCount:
    d, L = cfg.n_embd, cfg.n_layer
    attn = d * cfg.head_dim * (2 * cfg.n_head + 2 * cfg.n_kv_head)
    mlp = 3 * d * cfg.ffn_hidden
    body = L * (attn + mlp + 2 * d) + d
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return ParamCount(emb, body)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward): 6 x matmul parameters
    (body + output head; the embedding lookup is free) + 12 x L x T x attention width, halved
    for the causal mask (PaLM appendix B accounting)."""
    T = seq_len or cfg.block_size
    matmul = count_params(cfg).body + cfg.vocab_size * cfg.n_embd
    attn = 12 * cfg.n_layer * T * cfg.n_head * cfg.head_dim / 2
    return 6 * matmul + attn


def training_memory_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, autocast: bool = True,
                          fused_ce: bool = False) -> dict[str, float]:
    """Estimate of peak training memory on one device without sharding: fp32 weights, grads and
    two AdamW moments (16 bytes/param), activations kept for backward, and the logits."""
    n = count_params(cfg).total
    act_bytes = 2 if autocast else 4
    B, T, d, L = micro_batch, seq_len, cfg.n_embd, cfg.n_layer
    # Per layer: norm inputs/outputs, q k v, attention output, MLP in/out and the 2F gate_up (Korthikanti et al.).
    per_layer = B * T * (6 * d + 2 * cfg.n_head * cfg.head_dim + 2 * cfg.n_kv_head * cfg.head_dim
                         + 4 * cfg.ffn_hidden) * act_bytes
    logits = 0 if fused_ce else B * T * cfg.vocab_size * 4 * 2  # fp32 logits + their gradient
    states = 16 * n
    return {"weights_grads_optimizer": states, "activations": L * per_layer, "logits": logits,
            "total": states + L * per_layer + logits}


def human_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def memory_fit_error(cfg: ModelConfig, micro_batch: int, seq_len: int, batch_size: int, limit: float, source: str, *,
                     autocast: bool, fused_ce: bool, shards: int | None = 1) -> tuple[str, str] | None:
    """The one memory-fit check, run when a train config is validated (against the planned limit) and again
    when training starts (against the device's free memory): (field, message) when the estimate says training
    cannot fit in `limit` bytes, else None. `shards`: devices that ZeRO splits weights, gradients and AdamW
    moments over; None when unknown (validation does not know the world size): those are then not counted.
    The estimate is a lower bound, so a refusal is certain and a pass is not a promise."""
    where = f"the limit {human_bytes(limit)} ({source})"
    n = count_params(cfg).total
    if shards is not None and 16 * n / shards > limit:
        count = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        return "model", (f"{count} parameters need {human_bytes(16 * n / shards)} for weights, gradients and AdamW "
                         f"moments (16 bytes each) alone, over {where}")
    need = training_memory_bytes(cfg, micro_batch, seq_len, autocast, fused_ce)
    states = 0 if shards is None else need["weights_grads_optimizer"] / shards
    total = states + need["activations"] + need["logits"]
    if total > limit:
        return "micro_batch", (f"training memory estimate {human_bytes(total)} (weights+optimizer "
                               f"{human_bytes(states)}, activations {human_bytes(need['activations'])}, logits "
                               f"{human_bytes(need['logits'])} at micro_batch={micro_batch}, seq_len={seq_len}; "
                               f"batch_size={batch_size}) exceeds {where}; lower micro_batch (batch_size is reached "
                               "by accumulation) or seq_len")
    return None


def shapes_for_budget(budget: float, vocab: int, tolerance: float = 0.1, heads_dim: int = 128,
                      ratios=(8 / 3,), depths=range(4, 65)) -> list[ModelConfig]:
    """Depth x width combinations whose total parameters are within `tolerance` of `budget`;
    width a multiple of head_dim, so heads = width / head_dim."""
    out = []
    for L in depths:
        for ratio in ratios:
            # total(d) = L*(4 d^2 + 3 d ffn + 2d) + d + 2 V d  ~ solve quadratic in d
            a = L * (4 + 3 * ratio)
            b = 2 * vocab + 2 * L + 1
            d = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
            d = max(heads_dim, round(d / heads_dim) * heads_dim)
            cfg = ModelConfig(vocab_size=vocab, n_layer=L, n_embd=d, n_head=d // heads_dim,
                              ffn_hidden=ffn_size(d, ratio))
            if abs(count_params(cfg).total - budget) <= tolerance * budget:
                out.append(cfg)
    return out


def forward_latency_ms(cfg: ModelConfig, seq_len: int = 128, batch: int = 1, device="cpu", repeats: int = 3) -> float:
    """Measured forward latency of a randomly initialised model (depth costs serial time)."""
    import torch

    from engine.model import GPT

    with torch.device("meta"):  # skip the random init of a possibly 1B-parameter model: only speed matters here
        model = GPT(cfg)
    model = model.to_empty(device=device).eval()
    model.init_buffers(device)
    for p in model.parameters():
        p.data.fill_(0.01)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    with torch.no_grad():
        model(idx)  # warm up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            model(idx)
            best = min(best, time.perf_counter() - t)
    return best * 1e3


_PEAK_CACHE: dict[tuple[str, str], float] = {}


def measured_matmul_peak(device: str = "cpu", dtype=None, n: int = 1024, seconds: float = 0.5,
                         remeasure: bool = False) -> float:
    """FLOP/s of a square matmul on this device and dtype (default bf16): the denominator of the MFU estimate.
    The best of ten windows over `seconds`, not their average: a peak is what the device does when nothing
    else takes its share (one 1 s average on a 2-core Zen 4 read 349 GFLOP/s between readings of 391-445)."""
    import torch

    dtype = dtype or torch.bfloat16
    key = (str(device), str(dtype))
    if key not in _PEAK_CACHE or remeasure:  # remeasure: the best of this reading and the cached one
        g = torch.Generator().manual_seed(0)  # its own: the training RNG state must not depend on this cache
        a = torch.randn(n, n, generator=g).to(device, dtype)
        b = torch.randn(n, n, generator=g).to(device, dtype)
        module = getattr(torch, str(device).split(":")[0], None) if device != "cpu" else None
        a @ b
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            iters, t0 = 0, time.perf_counter()
            while iters == 0 or time.perf_counter() - t0 < seconds / 10:
                a @ b
                iters += 1
            if module is not None:
                module.synchronize()
            best = max(best, 2 * n ** 3 * iters / (time.perf_counter() - t0))
        _PEAK_CACHE[key] = max(best, _PEAK_CACHE.get(key, 0.0))
    return _PEAK_CACHE[key]
