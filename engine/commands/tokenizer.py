"""`tinyforge tokenizer`: the compact tokenizer (train / count / compact / report), and the
tokenizer stage of a job: `tinyforge tokenizer --config STAGE.yaml --out RUN_DIR` (or `... run`)."""
from pathlib import Path

import click

from engine.commands.common import config_option, out_option, set_option, stage_command

corpus_option = click.option("--corpus", "sources", multiple=True, type=click.Path(),
                             help="text file, folder or JSONL (repeatable; default: the bundled sample corpus)")
model_option = click.option("--model", required=True, type=click.Path(dir_okay=False),
                            help="SentencePiece .model file")
workers_option = click.option("--workers", type=int, default=None, help="encoding processes (default: all cores)")


def _sources(sources):
    from engine.paths import BUNDLED_CORPUS

    return list(sources) or [str(BUNDLED_CORPUS)]


def _run_stage(config_path, out_dir, overrides):
    from engine import spec as specs
    from engine.tokenizer.run import run_stage

    result = run_stage(specs.load("tokenizer", config_path, overrides), out_dir, log=lambda m: click.echo(m, err=True))
    for a in result["artifacts"]:
        click.echo(f"{a['name']}: {a['path']}")


@click.group(invoke_without_command=True)
@config_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="run directory of the stage (with --config)")
@set_option
@click.pass_context
@stage_command
def tokenizer(ctx, config_path, out_dir, overrides):
    """Train, count, compact and report SentencePiece tokenizers. With --config/--out (no subcommand):
    run the tokenizer stage of a job (docs/engine-contract.md; docs/tokenizer.md)."""
    if ctx.invoked_subcommand is not None:
        if config_path or out_dir or overrides:
            raise click.UsageError("--config/--out/--set belong to the stage form, not to a subcommand")
        return
    if not out_dir:
        click.echo(ctx.get_help())
        ctx.exit(0 if not (config_path or overrides) else 2)
    _run_stage(config_path, out_dir, overrides)


@tokenizer.command("run")
@config_option
@out_option
@set_option
@stage_command
def run(config_path, out_dir, overrides):
    """Run the tokenizer stage: CONFIG (TokenizerStageSpec) -> run.json, result.json and artifacts in OUT."""
    _run_stage(config_path, out_dir, overrides)


@tokenizer.command()
@corpus_option
@click.option("--vocab-size", type=int, default=32000, show_default=True)
@click.option("--type", "model_type", type=click.Choice(["bpe", "unigram"]), default="bpe", show_default=True)
@click.option("--special", "special_tokens", multiple=True, help="user-defined special token (repeatable)")
@click.option("--character-coverage", type=float, default=None, help="default: 0.9995, lowered for small vocabularies")
@click.option("--input-sentence-size", type=int, default=0, help="train on at most this many lines (0: all)")
@click.option("--seed", type=int, default=0)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .model file to write")
@stage_command
def train(sources, vocab_size, model_type, special_tokens, character_coverage, input_sentence_size, seed, out):
    """Train a SentencePiece model (byte fallback, identity normalisation, Llama layout)."""
    from engine.tokenizer.train import train_tokenizer

    train_tokenizer(_sources(sources), out, vocab_size, model_type, list(special_tokens), character_coverage,
                    input_sentence_size, seed=seed, log=lambda m: click.echo(m, err=True))
    click.echo(out)


@tokenizer.command()
@model_option
@corpus_option
@click.option("--shards", multiple=True, type=click.Path(), help="token shards (.bin) or dataset folder (repeatable)")
@click.option("--shard-dtype", type=click.Choice(["uint16", "uint32"]), default=None)
@workers_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="writes OUT.npy and OUT.tsv")
@stage_command
def count(model, sources, shards, shard_dtype, workers, out):
    """Token frequencies of MODEL over a corpus (parallel encode) or over token shards (bincount)."""
    from engine.tokenizer import count as C
    from engine.tokenizer.proto import load_proto

    pieces = [p.piece for p in load_proto(model).pieces]
    if shards and sources:
        raise ValueError("--shards: give either --corpus or --shards, not both")
    if shards:
        c = C.count_shards(list(shards), len(pieces), shard_dtype)
    else:
        c = C.count_text(model, _sources(sources), workers,
                         progress=lambda d, t, e: click.echo(f"  {d / 2**20:,.1f} / {t / 2**20:,.1f} MiB", err=True))
    paths = C.save_counts(c.counts, out, pieces)
    click.echo(f"{c.tokens:,} tokens ({int((c.counts > 0).sum()):,} distinct of {len(pieces):,}) in {c.seconds:.2f}s "
               f"-> {', '.join(map(str, paths))}")


@tokenizer.command()
@model_option
@click.option("--vocab", "vocab_size", type=int, default=None, help="a fixed number of pieces to keep (compact_vocab)")
@click.option("--coverage", type=float, default=None,
              help="keep the smallest vocabulary covering this share of MODEL's token occurrences (compact_coverage; "
                   "default 0.98 unless --vocab is given)")
@click.option("--counts", type=click.Path(dir_okay=False), help="frequency file from `count` (.npy/.tsv)")
@corpus_option
@workers_option
@click.option("--no-closure", is_flag=True, help="BPE: do not keep the pieces merges pass through (for comparison)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the compact .model to write")
@stage_command
def compact(model, vocab_size, coverage, counts, sources, workers, no_closure, out):
    """Keep the smallest vocabulary of MODEL covering --coverage (default 0.98) of its tokens on the
    corpus, or the --vocab most useful pieces; writes OUT, OUT.id_map.{json,npy} and OUT.json. Counted
    from a corpus (not --counts), the summary also gives tokens per byte and byte-piece share of both."""
    from engine.tokenizer import count as C
    from engine.tokenizer.compact import compact_model
    from engine.tokenizer.proto import load_proto
    from engine.tokenizer.spec import DEFAULT_COVERAGE

    n = len(load_proto(model).pieces)
    if counts and sources:
        raise ValueError("--counts: give either --counts or --corpus, not both")
    if vocab_size is not None and coverage is not None:
        raise ValueError(f"compact_coverage (--coverage): give either --vocab ({vocab_size}, a fixed size) or --coverage "
                         f"({coverage}, the smallest size reaching that share), not both")
    if vocab_size is None and coverage is None:
        coverage = DEFAULT_COVERAGE
    large_bytes = None
    if counts:
        freq = C.load_counts(counts, n)
    else:
        c = C.count_text(model, _sources(sources), workers)
        freq, large_bytes = c.counts, c.n_bytes
    s = compact_model(model, freq, vocab_size, out, closure=not no_closure, log=lambda m: click.echo(m, err=True),
                      coverage=coverage, sources=None if counts else _sources(sources), workers=workers,
                      large_bytes=large_bytes)
    if s.get("unreachable"):
        click.echo(f"unreachable kept pieces ({len(s['unreachable'])}): {' '.join(s['unreachable'][:20])}", err=True)
    click.echo(f"{s['model']}  id map {s['id_map']}")


@tokenizer.command()
@model_option
@corpus_option
@click.option("--sizes", default="8k,16k,32k,48k,72k", show_default=True, help="vocabulary sizes (plus the original)")
@click.option("--preset", default=None, help="model preset for the embedding + head share (default pangu-pi-1b-pro)")
@click.option("--counts", type=click.Path(dir_okay=False), help="frequency file from `count` over the same corpus")
@workers_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for report.{json,md,png}")
@stage_command
def report(model, sources, sizes, preset, counts, workers, out):
    """Coverage, tokens per byte, byte fallback and embedding share of MODEL compacted to each size."""
    from engine.tokenizer import count as C
    from engine.tokenizer.proto import load_proto
    from engine.tokenizer.report import DEFAULT_PRESET, parse_sizes, vocab_report

    freq = C.load_counts(counts, len(load_proto(model).pieces)) if counts else None
    vocab_report(model, _sources(sources), out, parse_sizes(sizes), preset or DEFAULT_PRESET, counts=freq,
                 workers=workers, log=lambda m: click.echo(m, err=True))
    click.echo((Path(out) / "report.md").read_text())


if __name__ == "__main__":
    tokenizer()
