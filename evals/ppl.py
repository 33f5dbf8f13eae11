"""`symphony eval ppl`: streaming perplexity over one long text, every method on the same tokens.
Library code: symphony.evaluation.ppl."""
from __future__ import annotations

import click

from symphony.cli_options import config_options
from symphony.evaluation.options import eval_options


@click.command()
@config_options
@eval_options(default_out="results/ppl")
@click.option("--text", "text", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file to score (default: the built-in corpus, Python's documentation).")
@click.option("--dataset", default=None, metavar="NAME[:CONFIG]",
              help="A `datasets` corpus instead, e.g. wikitext:wikitext-103-raw-v1 (needs it cached or a network).")
@click.option("--split", default="test", show_default=True, help="Dataset split (with --dataset).")
@click.option("--text-field", default="text", show_default=True, help="Dataset text column (with --dataset).")
@click.option("--max-tokens", type=click.IntRange(min=2), default=8192, show_default=True,
              help="Score the first this many tokens of the text.")
@click.option("--bucket", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens per point of the NLL-vs-position curve.")
@click.option("--full-window", type=click.IntRange(min=2), default=None,
              help="Context of the `full` baseline (default: the model's trained context window).")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Stride of `full`'s sliding window when the text is longer than it (default: window // 2).")
def command(cfg, methods, out, resume, memory_limit, text, dataset, split, text_field, max_tokens, bucket,
            full_window, stride):
    """Streaming perplexity over one long text; every method scores the same tokens.

    \b
    sinks / symphony stream the text through their bounded caches; full uses the model's whole
    context window (a sliding window with stride window/2 once the text is longer than it).
    Writes OUT/ppl.json (one row per method, saved as each finishes; --resume skips finished methods,
    plus mean NLL per --bucket positions) and OUT/ppl.png, and prints a table.
    Example:  symphony eval ppl --max-tokens 16384 --methods full,sinks,symphony
    """
    from symphony.evaluation.ppl import run_ppl

    run_ppl(cfg, methods, out, resume=resume, memory_limit=memory_limit, text=text, dataset=dataset, split=split,
            text_field=text_field, max_tokens=max_tokens, bucket=bucket, full_window=full_window, stride=stride)
