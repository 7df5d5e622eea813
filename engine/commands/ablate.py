"""`tinyforge ablate`: the cumulative ablation of the four formulas at equal parameters and equal
training FLOPs (with an equal-bytes view), on the corpus; table + JSON + bar chart into OUT."""
import click

from engine.commands.common import config_option, out_option, set_option, stage_command


@click.command()
@config_option
@out_option
@set_option
@click.option("--scale", type=click.Choice(["smoke", "default"]), default=None,
              help="budget preset (smoke: a test-sized run; default: the committed result)")
@stage_command
def ablate(config_path, out_dir, overrides, scale):
    """Baseline (large tokenizer, shallow-wide, random init), + compact tokenizer, + deeper-narrower,
    + inheritance from a parent, + a replay round: each arm at arm 1's parameter count and FLOPs.
    Writes ablation.{json,md,png} and each run's directory into OUT; re-running resumes."""
    import json
    from pathlib import Path

    from engine import spec as specs
    from engine.ablate.run import run_ablation

    flags = [f"scale={json.dumps(scale)}"] if scale else []
    spec = specs.load("ablate", config_path, [*flags, *overrides])
    run_ablation(spec, out_dir, log=lambda m: click.echo(m, err=True))
    click.echo((Path(out_dir) / "ablation.md").read_text())


if __name__ == "__main__":
    ablate()
