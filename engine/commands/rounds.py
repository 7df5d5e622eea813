"""`tinyforge rounds`: multiple-round training with hard-sample replay; `rounds score` and
`rounds sample` run the two pieces alone."""
import click

from engine.commands.common import config_option, set_option, stage_command

out_option = click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                          help="run directory (re-running with the same one resumes)")
checkpoint_option = click.option("--checkpoint", default=None, help="model to score with (default: init.checkpoint)")
round_option = click.option("--round", "k", type=int, default=2, show_default=True,
                            help="round number the draw is for (its default seed is seed + round)")


def piece_command(f):
    """The options of a piece run alone (`rounds score`, `rounds sample`): config, run directory, overrides,
    the checkpoint and the round."""
    for option in reversed((config_option, out_option, set_option, checkpoint_option, round_option, stage_command)):
        f = option(f)
    return rounds.command()(f)


def _spec(config_path, overrides):
    from engine import spec as specs
    return specs.load("rounds", config_path, overrides)


def _need_out(out_dir):
    if not out_dir:
        raise click.UsageError("Missing option '--out'.")


@click.group(invoke_without_command=True)
@config_option
@out_option
@set_option
@click.option("--progress/--no-progress", default=None, help="progress bar while training (default: on a terminal)")
@click.pass_context
@stage_command
def rounds(ctx, config_path, out_dir, overrides, progress):
    """Round 1 (init.checkpoint, or first_round_steps trained here), then `rounds` replay rounds, each
    trained on rate x N batches drawn by their loss under the previous round's model. Writes OUT/round_K/
    per round and the stage's result.json, metrics and forgetting curve into OUT."""
    if ctx.invoked_subcommand:
        return
    _need_out(out_dir)
    from engine.rounds.run import run_rounds

    s = run_rounds(_spec(config_path, overrides), out_dir, show_progress=progress)["summary"]
    for r in s["rounds"]:
        sel = r.get("selection") or {}
        drawn = f"  drawn {sel['n_selected']} ({sel['strategy']})" if sel else ""
        click.echo(f"round {r['round']}: {r['steps']} steps  val loss {r['val_loss']:.4f}  bpb {r['val_bpb']:.4f}"
                   f"{drawn}")
    ratio = s.get("score_vs_train_throughput")
    speed = f"  scoring {ratio:.2f}x training throughput" if ratio else ""
    click.echo(f"checkpoint {s['checkpoint']}{speed}")


@piece_command
def score(config_path, out_dir, overrides, checkpoint, k):
    """Loss of every pool item under CHECKPOINT into OUT/item_scores.npy (resumable)."""
    _need_out(out_dir)
    from engine.rounds.run import score_checkpoint

    s = score_checkpoint(_spec(config_path, overrides), out_dir, checkpoint, k)["summary"]
    speed = f"  {s['tokens_per_s']:,.0f} tok/s" if s.get("tokens_per_s") else ""
    click.echo(f"scored {s['n_items']} {s['granularity']} items: mean {s['mean_score']:.4f}  "
               f"{s['resumed_chunks']}/{s['chunks']} chunks from an earlier pass{speed}")


@piece_command
def sample(config_path, out_dir, overrides, checkpoint, k):
    """Draw round K's items from OUT/item_scores.npy into OUT/selected_ids.npy."""
    _need_out(out_dir)
    from engine.rounds.run import sample_scores

    s = sample_scores(_spec(config_path, overrides), out_dir, checkpoint, k)["summary"]
    extra = ""
    if s.get("mean_score_selected") is not None:
        extra = (f"  mean score {s['mean_score_selected']:.4f} vs pool {s['mean_score_pool']:.4f}  "
                 f"ESS {s['ess_fraction']:.1%}  top-k overlap {s['topk_overlap']:.1%}")
    click.echo(f"drew {s['n_selected']} ({s['strategy']}, seed {s['seed']}){extra}")


if __name__ == "__main__":
    rounds()
