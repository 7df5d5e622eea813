"""`tinyforge train`: train a model from a stage config."""
import click

from engine.commands.common import config_option, out_option, set_option, stage_command


@click.command()
@config_option
@out_option
@set_option
@click.option("--progress/--no-progress", default=None, help="progress bar (default: on a terminal)")
@stage_command
def train(config_path, out_dir, overrides, progress):
    """Train (or resume) a model; writes checkpoints, metrics and result.json into OUT."""
    from engine import spec as specs
    from engine.train import train as run

    result = run(specs.load("train", config_path, overrides), out_dir, show_progress=progress)
    s = result["summary"]
    click.echo(f"val loss {s['val_loss']:.4f}  bpb {s['val_bpb']:.4f}  checkpoint {s['checkpoint']}")


if __name__ == "__main__":
    train()
