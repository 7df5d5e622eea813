"""Model configuration and the registry of named presets (the one place shapes are defined)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace


def ffn_size(hidden: int, ratio: float = 8 / 3, multiple_of: int = 64) -> int:
    """SwiGLU intermediate size: ratio x hidden rounded up to a multiple (8/3 keeps 3 matrices at 8d^2)."""
    return multiple_of * math.ceil(hidden * ratio / multiple_of)


# the fields that are sizes (positive), checked here and marked on a job's model.overrides (engine/spec.py)
SIZE_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "head_dim", "ffn_hidden", "block_size")


@dataclass
class ModelConfig:
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None  # grouped-query attention; None = n_head
    head_dim: int | None = None  # explicit because hidden pruning breaks n_embd == n_head * head_dim
    ffn_hidden: int | None = None  # None = 8/3 x n_embd rounded to 64
    block_size: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        self._check_sizes()  # first as given: n_head 0 would divide by zero below
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.ffn_hidden = self.ffn_hidden or ffn_size(self.n_embd)
        self._check_sizes()
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_kv_head: {self.n_kv_head} does not divide n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim: rotary needs an even head_dim, got {self.head_dim}")

    def _check_sizes(self) -> None:
        for name in SIZE_FIELDS:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"model.{name}: must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model: unknown field(s) {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Preset:
    description: str
    config: dict = field(default_factory=dict)  # ModelConfig fields; vocab_size None = from the tokenizer


PRESETS: dict[str, Preset] = {
    # The paper's models (Table 1 of arXiv 2402.02791).
    "pangu-pi-1b-pro": Preset("PanGu-pi-1B Pro: deeper and narrower, compact 48k vocabulary (the released "
                              "training config uses 20 layers; the paper's table 21)",
                              dict(vocab_size=48000, n_layer=21, n_embd=1792, n_head=14, block_size=2048)),
    "pangu-pi-1.5b-pro": Preset("PanGu-pi-1.5B Pro", dict(vocab_size=48000, n_layer=22, n_embd=2048, n_head=16,
                                                          block_size=2048)),
    "pangu-pi-1b": Preset("PanGu-pi-1B baseline: shallow and wide, full 100k vocabulary",
                          dict(vocab_size=100883, n_layer=12, n_embd=2048, n_head=16, block_size=2048)),
    # CPU-sized presets: minutes on a laptop.
    "micro": Preset("tests: 2 layers, hidden 64", dict(vocab_size=None, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                                       block_size=64)),
    "tiny": Preset("demo: 4 layers, hidden 128", dict(vocab_size=None, n_layer=4, n_embd=128, n_head=4,
                                                      n_kv_head=2, block_size=128)),
    "small": Preset("8 layers, hidden 256", dict(vocab_size=None, n_layer=8, n_embd=256, n_head=4, block_size=256)),
    # the ablation's shapes are its own: computed from its scale (engine/ablate/spec.py SCALES, shapes.py)
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def model_config(preset: str, vocab_size: int | None = None, **overrides) -> ModelConfig:
    """Resolve a preset name (+ overrides) into a ModelConfig. `vocab_size` fills presets that take it
    from the tokenizer; an explicit override wins."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; known: {', '.join(preset_names())}")
    cfg = dict(PRESETS[preset].config)
    if cfg.get("vocab_size") is None:
        cfg["vocab_size"] = vocab_size
    cfg.update(overrides)
    if cfg["vocab_size"] is None:
        raise ValueError(f"model.vocab_size: preset {preset!r} takes it from the tokenizer; none given")
    return ModelConfig(**cfg)


def padded_vocab(n: int, multiple: int = 64) -> int:
    return multiple * math.ceil(n / multiple)


__all__ = ["ModelConfig", "PRESETS", "Preset", "model_config", "preset_names", "ffn_size", "padded_vocab", "replace"]
