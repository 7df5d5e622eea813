"""A parent model read one tensor at a time: an engine checkpoint or a Hugging Face Llama directory.

Nothing is cached: every `get` opens the file, copies one tensor out and lets the mapping go, so
the parent's pages never pile up in memory (the peak stays near one tensor, see the memory test)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine import checkpoint as ckpt
from engine.config import ModelConfig
from engine.hf import HFWeights


def engine_names(cfg: ModelConfig, layers=None) -> list[str]:
    """State-dict names of a GPT with `cfg` (of the given parent layers only, if any)."""
    per_layer = ("attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                 "attn.o_proj.weight", "mlp_norm.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")
    layers = range(cfg.n_layer) if layers is None else layers
    return ["embed.weight", *(f"blocks.{i}.{p}" for i in layers for p in per_layer), "norm.weight",
            "lm_head.weight"]


class ParentSource:
    config: ModelConfig
    tokenizer: str | None
    path: Path
    kind: str

    def get(self, name: str) -> torch.Tensor:
        """One fp32 tensor under its engine name, owned by the caller."""
        raise NotImplementedError

    def largest_tensor_bytes(self) -> int:
        """fp32 bytes of the largest single parent tensor (what `get` holds at its peak)."""
        c = self.config
        shapes = [(c.vocab_size, c.n_embd), (c.n_head * c.head_dim, c.n_embd), (2 * c.ffn_hidden, c.n_embd)]
        return 4 * max(a * b for a, b in shapes)


class CheckpointSource(ParentSource):
    kind = "engine"

    def __init__(self, step_dir: Path):
        self.path = step_dir
        manifest = ckpt.verify(step_dir)  # checksums first: a corrupt parent fails here, naming the file
        if "model_config" not in manifest or "model.safetensors" not in manifest["files"]:
            raise ckpt.CheckpointError(f"parent: {step_dir} has no model or model_config")
        self.config = ModelConfig.from_dict(manifest["model_config"])
        self.tokenizer = manifest.get("tokenizer")

    def get(self, name: str) -> torch.Tensor:
        # mmap: only this tensor's pages are read; the mapping closes when the view goes out of scope.
        try:
            view = ckpt.load_tensor(self.path, name)
        except KeyError:
            raise KeyError(f"parent: {self.path} has no tensor {name}")
        return view.to(torch.float32, copy=True)


class _UncachedHF(HFWeights):
    """HFWeights that opens a shard for each read instead of keeping every shard mapped."""

    def _handle(self, path: Path):
        from safetensors import safe_open
        return safe_open(str(path), "pt")


class HFSource(ParentSource):
    kind = "hf"

    def __init__(self, hf_dir: Path):
        self.path = hf_dir
        self.weights = _UncachedHF(hf_dir)
        self.config = self.weights.config
        self.tokenizer = str(hf_dir / "tokenizer.model") if (hf_dir / "tokenizer.model").is_file() else None

    def get(self, name: str) -> torch.Tensor:
        t = self.weights.get(name)
        return t if t.dtype == torch.float32 else t.float()


def resolve_checkpoint(path: Path) -> Path | None:
    """A step dir as is; a checkpoints root or run dir -> its newest valid checkpoint."""
    if (path / ckpt.MANIFEST).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = ckpt.latest_valid(root)
        if latest:
            return latest
    return None


def open_parent(path: str | Path) -> ParentSource:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"parent: {p} does not exist")
    if (p / "config.json").is_file():
        try:
            json.loads((p / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"parent: {p / 'config.json'} is not valid JSON ({exc})")
        return HFSource(p)
    step = resolve_checkpoint(p)
    if step is None:
        raise FileNotFoundError(f"parent: {p} is neither an engine checkpoint (no valid step_*/manifest.json) "
                                "nor a Hugging Face directory (no config.json)")
    return CheckpointSource(step)
