"""`tinyforge generate`: sample a continuation of a prompt from a checkpoint."""
import click

from engine.commands.common import stage_command


@click.command()
@click.option("--checkpoint", required=True, help="checkpoint or run directory")
@click.option("--prompt", default="", help="text to continue")
@click.option("--max-new-tokens", type=int, default=100, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy")
@click.option("--top-k", type=int, default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", default=None, help="default: the tokenizer recorded in the checkpoint")
@stage_command
def generate(checkpoint, prompt, max_new_tokens, temperature, top_k, seed, tokenizer):
    """Print the prompt and a sampled continuation."""
    from engine.generate import generate_text

    click.echo(generate_text(checkpoint, prompt, max_new_tokens, temperature, top_k, seed, tokenizer))
