"""`tinyforge arch`: parameter counts, FLOPs and memory of a preset, or the shapes fitting a budget."""
import click

from engine.commands.common import stage_command


def _row(cfg, batch, seq, latency=None):
    from engine.arch import count_params, flops_per_token, training_memory_bytes

    p = count_params(cfg)
    mem = training_memory_bytes(cfg, batch, seq)
    row = {"layers": cfg.n_layer, "hidden": cfg.n_embd, "heads": cfg.n_head, "kv_heads": cfg.n_kv_head,
           "ffn": cfg.ffn_hidden, "vocab": cfg.vocab_size, "params_M": p.total / 1e6, "body_M": p.body / 1e6,
           "emb+head_M": p.embedding / 1e6, "emb_share": p.embedding_share,
           "GFLOPs/token": flops_per_token(cfg, seq) / 1e9, "train_mem_GiB": mem["total"] / 2**30}
    if latency is not None:
        row["fwd_ms"] = latency
    return row


def _print(rows, title):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for r in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) and v < 1 else f"{v:,.1f}" if isinstance(v, float)
                        else f"{v:,}" for v in r.values()))
    Console(width=max(160, Console().width)).print(table)


@click.command()
@click.argument("preset", required=False)
@click.option("--vocab", type=int, default=None, help="vocabulary size (for presets that take it from a tokenizer)")
@click.option("--budget", type=float, default=None, help="list shapes with this many parameters (e.g. 1e9)")
@click.option("--tolerance", type=float, default=0.05, show_default=True, help="budget tolerance")
@click.option("--batch", type=int, default=1, show_default=True, help="micro batch for the memory estimate")
@click.option("--seq", type=int, default=None, help="sequence length (default: the preset's)")
@click.option("--latency-seq", type=int, default=64, show_default=True, help="sequence for the measured latency")
@click.option("--no-latency", is_flag=True, help="skip the measured forward latency")
@stage_command
def arch(preset, vocab, budget, tolerance, batch, seq, latency_seq, no_latency):
    """Parameter counts (embedding+head vs body), FLOPs/token and training memory of PRESET, or with
    --budget the depth x width x heads shapes that fit a parameter budget, with measured forward latency."""
    from engine.arch import forward_latency_ms, shapes_for_budget
    from engine.config import model_config

    if budget:
        if not vocab:
            raise ValueError("--vocab: required with --budget")
        shapes = shapes_for_budget(budget, vocab, tolerance, depths=range(4, 49, 2))
        if not shapes:
            raise ValueError(f"--budget: no shape within {tolerance:.0%} of {budget:,.0f} parameters")
        rows = [_row(c, batch, seq or c.block_size, None if no_latency else
                     forward_latency_ms(c, seq_len=latency_seq, repeats=1)) for c in shapes]
        _print(rows, f"shapes with {budget:,.0f} +- {tolerance:.0%} parameters, vocab {vocab:,} "
                     f"(fwd_ms: batch 1 x {latency_seq} tokens on cpu)")
        return
    if not preset:
        raise ValueError("preset: give a preset name or --budget")
    cfg = model_config(preset, vocab_size=vocab or 32000)
    _print([_row(cfg, batch, seq or cfg.block_size)], f"{preset} (micro batch {batch}, seq {seq or cfg.block_size})")
