"""`tinyforge eval`: held-out loss, perplexity and bits-per-byte of a checkpoint."""
import click

from engine.commands.common import config_option, out_option, set_option, stage_command


@click.command("eval")
@config_option
@out_option
@set_option
@stage_command
def evaluate(config_path, out_dir, overrides):
    """Evaluate the checkpoint named in the config (a checkpoint or run directory) on the held-out split."""
    from engine import spec as specs
    from engine.evaluate import run_eval

    result = run_eval(specs.load("eval", config_path, overrides), out_dir)
    s = result["summary"]
    click.echo(f"val loss {s['val_loss']:.4f}  ppl {s['val_ppl']:.2f}  bpb {s['val_bpb']:.4f}")


if __name__ == "__main__":
    evaluate()
