"""Hugging Face Llama format: export, import, and a lazy tensor-by-tensor reader (also what parameter
inheritance reads a parent through, so a parent never has to fit in memory at once)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from engine.config import ModelConfig

# engine name -> HF name; gate_up_proj is stored split as gate_proj / up_proj.
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_GLOBAL = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32", tokenizer=None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "initializer_range": cfg.init_std, "torch_dtype": dtype, "dtype": dtype,
        "bos_token_id": getattr(tokenizer, "bos_id", None), "eos_token_id": getattr(tokenizer, "eos_id", None),
        "pad_token_id": None, "use_cache": True,
    }


def read_hf_config(hf_dir: Path) -> ModelConfig:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"hf_dir: {hf_dir} has no config.json")
    c = json.loads(path.read_text())
    if c.get("model_type") not in ("llama", "mistral", "qwen2", None):
        raise ValueError(f"hf_dir: model_type {c.get('model_type')!r} is not a Llama-style decoder")
    theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_embd=c["hidden_size"],
                       n_head=c["num_attention_heads"], n_kv_head=c.get("num_key_value_heads"),
                       head_dim=c.get("head_dim"), ffn_hidden=c["intermediate_size"],
                       block_size=c.get("max_position_embeddings", 2048), rope_theta=theta,
                       norm_eps=c.get("rms_norm_eps", 1e-6), tie_embeddings=c.get("tie_word_embeddings", False))


class HFWeights:
    """Lazy access to a Hugging Face checkpoint in safetensors (single or sharded with an index): each `get`
    reads one tensor from disk. The pickle format (pytorch_model.bin) is refused: unpickling runs code."""

    def __init__(self, hf_dir: Path):
        self.dir = Path(hf_dir)
        self.config = read_hf_config(self.dir)
        self.location: dict[str, Path] = {}
        if (self.dir / "model.safetensors.index.json").is_file():
            weight_map = json.loads((self.dir / "model.safetensors.index.json").read_text())["weight_map"]
            self.location = {k: self.dir / v for k, v in weight_map.items()}
            if not all(p.suffix == ".safetensors" for p in self.location.values()):
                raise ValueError(f"hf_dir: {self.dir / 'model.safetensors.index.json'} names files that are not "
                                 "safetensors")
        elif (self.dir / "model.safetensors").is_file():
            from safetensors import safe_open
            with safe_open(str(self.dir / "model.safetensors"), "pt") as f:
                self.location = {k: self.dir / "model.safetensors" for k in f.keys()}
        elif any(self.dir.glob("pytorch_model*.bin")):
            raise ValueError(f"hf_dir: {self.dir} holds pytorch_model.bin, the pickle format, which is not accepted: "
                             "unpickling a file can run arbitrary code. Save it as safetensors "
                             "(save_pretrained(..., safe_serialization=True))")
        if not self.location:
            raise FileNotFoundError(f"hf_dir: no model.safetensors or model.safetensors.index.json in {self.dir}")
        self._open: dict[Path, object] = {}

    def _handle(self, path: Path):
        if path not in self._open:
            from safetensors import safe_open
            self._open[path] = safe_open(str(path), "pt")
        return self._open[path]

    def hf_tensor(self, name: str) -> torch.Tensor:
        return self._handle(self.location[name]).get_tensor(name)

    def has(self, hf_name: str) -> bool:
        return hf_name in self.location

    def get(self, engine_name: str) -> torch.Tensor:
        """One tensor under its engine name (fp32)."""
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", engine_name)
        if m:
            i, rest = m.groups()
            prefix = f"model.layers.{i}."
            if rest == "mlp.gate_up_proj.weight":
                return torch.cat([self.hf_tensor(prefix + "mlp.gate_proj.weight"),
                                  self.hf_tensor(prefix + "mlp.up_proj.weight")]).float()
            return self.hf_tensor(prefix + _LAYER[rest]).float()
        if engine_name == "lm_head.weight" and not self.has("lm_head.weight"):
            return self.hf_tensor("model.embed_tokens.weight").float()  # tied
        return self.hf_tensor(_GLOBAL[engine_name]).float()


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if m:
            i, rest = m.groups()
            prefix = f"model.layers.{i}."
            if rest == "mlp.gate_up_proj.weight":
                gate, up = t.chunk(2, dim=0)
                out[prefix + "mlp.gate_proj.weight"], out[prefix + "mlp.up_proj.weight"] = gate, up
            else:
                out[prefix + _LAYER[rest]] = t
        elif name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        else:
            out[_GLOBAL[name]] = t
    return {k: v.contiguous() for k, v in out.items()}


def export(checkpoint_dir: Path, out_dir: Path, tokenizer_path: str | None = None, dtype: str = "float32") -> Path:
    """Engine checkpoint -> Hugging Face Llama directory (config.json, model.safetensors, tokenizer files)."""
    from safetensors.torch import save_file

    from engine import checkpoint as ckpt

    manifest, parts = ckpt.load(Path(checkpoint_dir), ("model",))
    cfg = ModelConfig.from_dict(manifest["model_config"])
    tokenizer_path = tokenizer_path or manifest.get("tokenizer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = None
    if tokenizer_path and tokenizer_path != "byte":
        from engine.tokenizer.load import load_tokenizer
        tok = load_tokenizer(tokenizer_path)
        shutil.copy(tokenizer_path, out_dir / "tokenizer.model")
        (out_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "model_max_length": cfg.block_size, "add_bos_token": False,
            "add_eos_token": False, "legacy": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
            indent=1))
    state = {k: v.to(getattr(torch, dtype)) for k, v in parts["model"].items()}
    save_file(to_hf_state(state, cfg), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype, tok), indent=1))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": getattr(tok, "bos_id", None), "eos_token_id": getattr(tok, "eos_id", None)}))
    return out_dir


def load_hf_weights(model: torch.nn.Module, hf_dir: Path) -> None:
    weights = HFWeights(hf_dir)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            t = weights.get(name)
            if t.shape != p.shape:
                raise ValueError(f"hf_dir: {name} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(t)


def import_hf(hf_dir: Path, out_root: Path) -> Path:
    """Hugging Face Llama directory -> engine checkpoint (model only) under out_root."""
    from engine import checkpoint as ckpt
    from engine.model import GPT

    cfg = read_hf_config(hf_dir)
    model = GPT(cfg)
    load_hf_weights(model, hf_dir)
    tokenizer = str(Path(hf_dir) / "tokenizer.model") if (Path(hf_dir) / "tokenizer.model").is_file() else None
    return ckpt.save(Path(out_root), 0, {"model": model.state_dict()},
                     {"model_config": cfg.to_dict(), "tokenizer": tokenizer, "source": str(hf_dir)})
