"""`tinyforge inherit`: initialise a small child model from a larger parent (parameter inheritance)."""
import click

from engine.commands.common import config_option, out_option, set_option, stage_command
from engine.stages import BACKENDS


def _flag_overrides(parent, child_preset, child_config, depth, layers, width, calib, id_map, child_tokenizer,
                    seed, backend) -> list[str]:
    """Command-line flags as `key=value` overrides of the stage config (flags win over --config)."""
    import json

    pairs = {"parent": parent, "child.preset": child_preset, "child.config": child_config,
             "depth.method": depth, "width": width, "vocab.id_map": id_map, "vocab.tokenizer": child_tokenizer,
             "seed": seed, "backend": backend}
    out = [f"{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]
    if layers:
        try:
            ids = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated layer ids, got {layers!r}", param_hint="--layers")
        out += ["depth.method=explicit", f"depth.layers={json.dumps(ids)}"]
    if calib:
        out.append(f"calib.sources={json.dumps(list(calib))}")
    return out


@click.command()
@config_option
@out_option
@set_option
@click.option("--parent", help="engine checkpoint (or run dir) or Hugging Face Llama directory")
@click.option("--child-preset", help="child shape from a preset (head_dim always the parent's)")
@click.option("--child-config", type=click.Path(dir_okay=False), help="child shape from a ModelConfig JSON/YAML file")
@click.option("--depth", help="uniform | first | last | ends | block_influence | loss_rise")
@click.option("--layers", help="explicit parent layers to keep, e.g. 0,1,6,7 (implies --depth explicit)")
@click.option("--width", help="random | l1 | l2 | taylor | activation | learnable")
@click.option("--calib", multiple=True, help="calibration / held-out corpus (file or folder; repeatable)")
@click.option("--id-map", help="compact tokenizer's old-id -> new-id map (JSON or .npy)")
@click.option("--child-tokenizer", help="the child's tokenizer (SentencePiece .model), for the held-out loss")
@click.option("--seed", type=int)
@click.option("--backend", type=click.Choice(BACKENDS))
@stage_command
def inherit(config_path, out_dir, overrides, parent, child_preset, child_config, depth, layers, width, calib,
            id_map, child_tokenizer, seed, backend):
    """Cut a child out of PARENT: choose layers (depth) and heads / neurons / channels (width), write the
    child checkpoint (train it with init.checkpoint) and report.{json,md,png} into OUT."""
    from engine import spec as specs
    from engine.inherit.run import inherit as run

    flags = _flag_overrides(parent, child_preset, child_config, depth, layers, width, calib, id_map,
                            child_tokenizer, seed, backend)
    spec = specs.load("inherit", config_path, [*flags, *overrides])
    s = run(spec, out_dir)["summary"]
    loss = f"  held-out loss {s['inherited_loss']:.4f} (random init {s['random_init_loss']:.4f})" \
        if "inherited_loss" in s else ""
    click.echo(f"child {s['child_params'] / 1e6:.3f}M params from {s['parent_params'] / 1e6:.3f}M, layers "
               f"{s['layers']}{loss}  checkpoint {s['checkpoint']}")


if __name__ == "__main__":
    inherit()
