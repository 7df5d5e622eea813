"""The engine-only quick demo (`tinyforge demo --engine-only`): train `tiny` on the bundled corpus, no service."""
import time

import click

from engine.commands.common import stage_command


@click.command()
@click.option("--steps", type=int, default=300, show_default=True)
@click.option("--out", "out_dir", default=None, help="run directory (default: $TINYFORGE_HOME/runs/demo-<time>)")
@stage_command
def demo(steps, out_dir):
    """Train the `tiny` preset on the bundled corpus; print held-out loss, bits-per-byte and the checkpoint."""
    from engine.paths import state_home
    from engine.spec import TrainSpec
    from engine.train import train

    out_dir = out_dir or state_home() / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    spec = TrainSpec(steps=steps, eval_every=max(steps // 4, 1), checkpoint_every=max(steps // 4, 1),
                     log_every=max(steps // 20, 1))
    result = train(spec, out_dir)
    s = result["summary"]
    click.echo(f"\nheld-out loss {s['val_loss']:.4f} nats/token, {s['val_bpb']:.4f} bits/byte "
               f"after {s['steps']} steps ({s['tokens']:,} tokens, {s['params'] / 1e6:.2f}M params)")
    click.echo(f"checkpoint: {s['checkpoint']}\nloss curve: {out_dir}/loss.png")


if __name__ == "__main__":  # `tinyforge demo --engine-only` runs this as a command
    demo()
