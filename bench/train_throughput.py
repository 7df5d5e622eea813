"""Training throughput: the engine's model against transformers' LlamaForCausalLM, same config, same
machine, same run (hidden 256, 8 layers, 4 heads, vocab 8000, seq 256, batch 8, bf16 autocast, AdamW).

Prints tokens/s for both, the ratio, and the engine's fraction of this device's measured bf16 matmul
peak (MFU). Usage: python bench/train_throughput.py [--steps 10] [--backend auto] [--compile]"""
from __future__ import annotations

import argparse
import time

import torch
import transformers

from engine.arch import flops_per_token, measured_matmul_peak
from engine.backend import resolve
from engine.config import ModelConfig
from engine.model import GPT
from engine.train import param_groups

CFG = ModelConfig(vocab_size=8000, n_layer=8, n_embd=256, n_head=4, block_size=256)
SEQ, BATCH = 256, 8


def hf_model() -> torch.nn.Module:
    c = transformers.LlamaConfig(vocab_size=CFG.vocab_size, hidden_size=CFG.n_embd, intermediate_size=CFG.ffn_hidden,
                                 num_hidden_layers=CFG.n_layer, num_attention_heads=CFG.n_head,
                                 num_key_value_heads=CFG.n_kv_head, max_position_embeddings=SEQ,
                                 attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(c)


def tokens_per_s(step_fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step_fn()
    t = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return steps * BATCH * SEQ / (time.perf_counter() - t)


def make_step(model, loss_fn, backend, opt):
    x = torch.randint(0, CFG.vocab_size, (BATCH, SEQ), device=backend.device)
    y = torch.roll(x, -1, 1)

    def step():
        with backend.autocast():
            loss = loss_fn(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if backend.device.type != "cpu":
            getattr(torch, backend.device.type).synchronize()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = ap.parse_args()
    torch.manual_seed(0)
    backend = resolve(args.backend, "bf16")
    ours = GPT(CFG, backend.ops).to(backend.device)
    theirs = hf_model().to(backend.device)
    if args.compile:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    opt_a = backend.ops.adamw(param_groups(ours, 0.1), lr=1e-3)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    step_a = make_step(ours, lambda m, x, y: m(x, y), backend, opt_a)
    step_b = make_step(theirs, lambda m, x, y: m(input_ids=x, labels=x).loss, backend, opt_b)
    # interleave the two measurements so drift in machine load hits both alike
    a, b = [], []
    for _ in range(3):
        a.append(tokens_per_s(step_a, args.steps))
        b.append(tokens_per_s(step_b, args.steps))
    a, b = max(a), max(b)
    peak = measured_matmul_peak(str(backend.device), torch.bfloat16, n=1024, seconds=1.0)
    mfu = a * flops_per_token(CFG, SEQ) / peak
    print(f"device {backend.device} ({torch.get_num_threads()} threads), backend ops {backend.ops.chosen}")
    print(f"config: hidden {CFG.n_embd}, layers {CFG.n_layer}, heads {CFG.n_head}, vocab {CFG.vocab_size}, "
          f"seq {SEQ}, batch {BATCH}, bf16 autocast, AdamW{', torch.compile' if args.compile else ''}")
    print(f"engine GPT                      {a:10,.0f} tokens/s")
    print(f"transformers LlamaForCausalLM   {b:10,.0f} tokens/s")
    print(f"ratio engine / transformers     {a / b:10.2f}x   (target >= 1.6x)")
    print(f"engine MFU vs measured bf16 matmul peak ({peak / 1e12:.2f} TFLOP/s): {mfu:.1%}")


if __name__ == "__main__":
    main()
