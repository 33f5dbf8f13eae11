"""`symphony eval needle`: needle-in-a-haystack accuracy over context length x depth, every method on the
same needles. Library code: symphony.evaluation.needle."""
from __future__ import annotations

import click

from symphony.cli_options import config_options
from symphony.evaluation.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, MAX_DISTRACTORS, NEEDLE_KINDS
from symphony.evaluation.options import eval_options


@click.command()
@config_options
@eval_options(default_out="results/needle")
@click.option("--lengths", "-l", default=DEFAULT_LENGTHS, show_default=True,
              help="Context lengths in tokens (haystack only), e.g. 1k,4k,16k or 4096,8192.")
@click.option("--depths", "-d", default=DEFAULT_DEPTHS, show_default=True,
              help="Needle depths in percent of the haystack.")
@click.option("--trials", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials per (length, depth) cell, each with a fresh needle.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the needles: the same cell gets the same needle for every method and every run.")
@click.option("--haystack", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file for the haystack (default: the built-in corpus, Python's documentation).")
@click.option("--needle", "needle_kind", type=click.Choice(NEEDLE_KINDS), default="number", show_default=True,
              help="What the secret is: a 7-digit number, a word, or a uuid code.")
@click.option("--distractors", type=click.IntRange(0, MAX_DISTRACTORS), default=0, show_default=True,
              help="Other needles of the same kind with different keys planted elsewhere in the haystack.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Longest answer, in tokens (greedy decoding).")
def command(cfg, methods, out, resume, memory_limit, lengths, depths, trials, seed, haystack, needle_kind,
            distractors, max_new_tokens):
    """Needle-in-a-haystack accuracy over context length x depth; every method on the same needles.

    \b
    Writes OUT/needle.json (every trial, saved as it finishes; --resume skips finished cells),
    OUT/needle_<method>.png (depth x length heatmaps) and prints an accuracy table.
    Example:  symphony eval needle --lengths 1k,8k,32k --depths 0,50,100 --methods sinks,symphony
    """
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.needle import parse_depths, run_needle

    run_needle(cfg, methods, out, resume=resume, memory_limit=memory_limit, lengths=parse_lengths(lengths),
               depths=parse_depths(depths), trials=trials, seed=seed, haystack=haystack, needle_kind=needle_kind,
               distractors=distractors, max_new_tokens=max_new_tokens)
