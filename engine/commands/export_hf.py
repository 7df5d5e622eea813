"""`tinyforge export-hf` / `tinyforge import-hf`: convert between engine checkpoints and Hugging Face Llama."""
from pathlib import Path

import click

from engine.commands.common import stage_command


@click.command("export-hf")
@click.option("--checkpoint", required=False, help="checkpoint directory, or a run directory (newest checkpoint)")
@click.option("--tokenizer", default=None, help="SentencePiece model to ship (default: the one the run used)")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32")
@click.option("--config", "config_path", default=None, help="export stage config (checkpoint, tokenizer, dtype)")
@click.option("--out", "out_dir", required=True, help="output directory")
@stage_command
def export_hf(checkpoint, tokenizer, dtype, config_path, out_dir):
    """Write a Hugging Face Llama directory that transformers' AutoModelForCausalLM loads."""
    from engine import hf
    from engine import spec as specs
    from engine.run_record import RunRecord

    if config_path:
        s = specs.load("export", config_path)
        checkpoint, tokenizer, dtype = s.checkpoint, s.tokenizer, s.dtype
    if not checkpoint:
        raise ValueError("checkpoint: required (--checkpoint or the config's checkpoint)")
    record = RunRecord(out_dir)
    from engine.evaluate import resolve_checkpoint
    src = resolve_checkpoint(checkpoint)
    record.start("export", {"checkpoint": str(src), "tokenizer": tokenizer, "dtype": dtype})
    model_dir = hf.export(src, Path(out_dir) / "hf", tokenizer, dtype)
    record.result("export", {"hf_dir": str(model_dir)}, [{"name": "hf_model", "path": str(model_dir), "type": "model"}],
                  [str(src)])
    click.echo(f"exported {src} -> {model_dir}")


@click.command("import-hf")
@click.option("--hf-dir", required=True, help="Hugging Face Llama directory")
@click.option("--out", "out_dir", required=True, help="where the engine checkpoint goes")
@stage_command
def import_hf(hf_dir, out_dir):
    """Read a Hugging Face Llama directory into an engine checkpoint."""
    from engine import hf

    path = hf.import_hf(Path(hf_dir), Path(out_dir))
    click.echo(f"imported {hf_dir} -> {path}")
