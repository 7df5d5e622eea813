"""Sampling text from a checkpoint (temperature + top-k), no KV cache: tiny models, short outputs."""
from __future__ import annotations

import torch

from engine.evaluate import load_model
from engine.tokenizer.load import load_tokenizer


@torch.no_grad()
def sample(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 50,
           eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -model.config.block_size:])[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
    return idx


def generate_text(checkpoint: str, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                  top_k: int | None = 50, seed: int = 0, tokenizer: str | None = None) -> str:
    model, manifest = load_model(checkpoint)
    tok = load_tokenizer(tokenizer or manifest.get("tokenizer") or "byte")
    ids = tok.encode(prompt) or [tok.eos_id]
    out = sample(model, torch.tensor([ids]), max_new_tokens, temperature, top_k, tok.eos_id,
                 torch.Generator().manual_seed(seed))
    return prompt + tok.decode(out[0, len(ids):].tolist())
