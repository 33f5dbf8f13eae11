"""`symphony eval oom`: peak memory and speed against context length (OOM stress)."""
from __future__ import annotations

import click

from symphony.cli_options import config_options
from symphony.evaluation.options import eval_options, positive_finite


@click.command()
@config_options
@eval_options(default_out="results/oom")
@click.option("--lengths", "-l", default="4k,8k,16k,32k,64k", show_default=True,
              help="Context lengths in tokens, e.g. 4k,8k,16k or 1000,3000.")
@click.option("--decode-tokens", default=16, show_default=True, type=click.IntRange(min=0),
              help="Tokens decoded greedily after each ingest (timed per token; 0: skip).")
@click.option("--time-limit", default=None, type=float, callback=positive_finite, metavar="SECONDS",
              help="Skip a measurement whose projected time (from the method's previous length: quadratic for"
                   " full, linear for bounded methods) exceeds this; recorded as skipped_time. Default: none.")
def command(cfg, methods, out, resume, memory_limit, lengths, decode_tokens, time_limit):
    """Measure peak memory, cache size, ingest tokens/s and decode ms/token for every method at every
    length, each in a fresh worker process. Cells projected over --memory-limit are recorded as over_limit
    (never run); a worker that dies (out-of-memory kill, ...) is recorded as failed. Writes OUT/oom.json
    after every cell (--resume continues it; over_limit/skipped_time cells are decided again) and OUT/oom.png."""
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.oom import render_table, run_oom

    rows = run_oom(cfg, parse_lengths(lengths), methods, out, resume=resume, memory_limit=memory_limit,
                   decode_tokens=decode_tokens, time_limit=time_limit)
    click.echo()
    for line in render_table(rows):
        click.echo(line)
    click.echo(f"-> {out / 'oom.json'}, {out / 'oom.png'}")
