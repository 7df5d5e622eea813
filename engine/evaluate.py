"""Held-out evaluation of a checkpoint: loss, perplexity and bits-per-byte on the validation split."""
from __future__ import annotations

from pathlib import Path

import torch

from engine import checkpoint as ckpt
from engine.backend import Backend, resolve
from engine.config import ModelConfig
from engine.data import TokenData, prepare_data
from engine.model import GPT
from engine.run_record import RunRecord
from engine.spec import EvalSpec
from engine.train import evaluate


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory / checkpoints folder meaning its newest valid one."""
    p = Path(path)
    for root in (p / "checkpoints", p):
        if ckpt.list_checkpoints(root):
            found = ckpt.latest_valid(root)
            if found is None:
                raise ckpt.CheckpointError(f"checkpoint: every checkpoint under {root} fails verification")
            return found
    if not p.exists():
        raise FileNotFoundError(f"checkpoint: {p} does not exist")
    return p


def load_model(path: str | Path, backend: Backend | None = None, frozen: bool = False) -> tuple[GPT, dict]:
    """The model a checkpoint (or a run directory: its newest valid one) holds, and its manifest: with the
    backend's ops and on its device when given; `frozen`: in eval mode without gradients (scoring)."""
    manifest, parts = ckpt.load(resolve_checkpoint(path), ("model",))
    cfg = ModelConfig.from_dict(manifest["model_config"])
    model = GPT(cfg, backend.ops) if backend else GPT(cfg)
    model.load_state_dict(parts["model"])
    if backend:
        model.to(backend.device)
    if frozen:
        model.eval().requires_grad_(False)
    return model, manifest


def run_eval(spec: EvalSpec, out_dir: str | Path, log=print) -> dict:
    backend = resolve(spec.backend, "bf16")
    record = RunRecord(out_dir)
    path = resolve_checkpoint(spec.checkpoint)
    model, manifest = load_model(path, backend)
    data_dir, _ = prepare_data(spec.data, log=log)
    cfg = model.config
    val = TokenData.open(data_dir, "val", cfg.block_size, vocab_limit=cfg.vocab_size)
    record.start("eval", spec.model_dump(mode="json"), backend=backend.describe(), checkpoint=str(path))
    with torch.no_grad():
        metrics = evaluate(model, val, spec.batches, spec.micro_batch, backend)
    record.metric(step=manifest["step"], split="val", **metrics)
    log(f"{path}: val loss {metrics['loss']:.4f} ppl {metrics['ppl']:.2f} bpb {metrics['bpb']:.4f}")
    inputs = [str(path), *spec.data.sources] + ([spec.data.tokenizer] if spec.data.tokenizer != "byte" else [])
    return record.result("eval", {"checkpoint": str(path), "val_loss": metrics["loss"], "val_ppl": metrics["ppl"],
                                  "val_bpb": metrics["bpb"], "val_tokens": metrics["tokens"],
                                  "val_bytes": metrics["bytes"], "params": sum(p.numel() for p in model.parameters())},
                         [], inputs)
