"""The `symphony eval` suites' commands, and their registry. Each command parses its options and calls the
suite's library code in `symphony/evaluation/`; adding a suite means its module there plus one command and one
`SUITES` entry here."""
from __future__ import annotations

import click

from symphony.cli.options import config_options
from symphony.evaluation.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, MAX_DISTRACTORS, NEEDLE_KINDS
from symphony.evaluation.options import eval_options, positive_finite


# the haystack text: `manpages` gives millions of tokens that never repeat; the built-in corpus cycles
haystack_option = click.option(
    "--haystack", default="builtin", show_default=True, metavar="builtin|manpages|FILE|DATASET",
    help="Haystack text: the built-in corpus (Python's documentation, 465 KB, cycled when longer), this"
         " machine's man pages (millions of tokens that never repeat; rendered once, cached), a text file, or a"
         " `datasets` name.")


@click.command("oom")
@config_options
@eval_options(default_out="results/oom")
@click.option("--lengths", "-l", default="4k,8k,16k,32k,64k", show_default=True,
              help="Context lengths in tokens, e.g. 4k,8k,16k or 1000,3000.")
@click.option("--decode-tokens", default=16, show_default=True, type=click.IntRange(min=0),
              help="Tokens decoded greedily after each ingest (timed per token; 0: skip).")
@click.option("--time-limit", default=None, type=float, callback=positive_finite, metavar="SECONDS",
              help="Skip a measurement whose projected time (from the method's previous length: quadratic for"
                   " full, linear for bounded methods) exceeds this; recorded as skipped_time. Default: none.")
def oom(cfg, methods, out, resume, memory_limit, lengths, decode_tokens, time_limit):
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


@click.command("needle")
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
@haystack_option
@click.option("--needle", "needle_kind", type=click.Choice(NEEDLE_KINDS), default="number", show_default=True,
              help="What the secret is: a 7-digit number, a word, or a uuid code.")
@click.option("--distractors", type=click.IntRange(0, MAX_DISTRACTORS), default=0, show_default=True,
              help="Other needles of the same kind with different keys planted elsewhere in the haystack.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Longest answer, in tokens (greedy decoding).")
def needle(cfg, methods, out, resume, memory_limit, lengths, depths, trials, seed, haystack, needle_kind,
            distractors, max_new_tokens):
    """Needle-in-a-haystack accuracy over context length x depth; every method on the same needles.

    \b
    Writes OUT/needle.json (every trial, saved as it finishes; --resume skips finished cells),
    OUT/needle_<method>.png (depth x length heatmaps) and prints an accuracy table.
    Under `accelerate launch --num_processes N -m symphony.cli.main eval needle ...` the cells are split
    across N processes (GPUs or nodes; across nodes OUT must be shared) and merged into the same OUT/needle.json.
    Example:  symphony eval needle --lengths 1k,8k,32k --depths 0,50,100 --methods sinks,symphony
    """
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.needle import parse_depths, run_needle

    run_needle(cfg, methods, out, resume=resume, memory_limit=memory_limit, lengths=parse_lengths(lengths),
               depths=parse_depths(depths), trials=trials, seed=seed, haystack=haystack, needle_kind=needle_kind,
               distractors=distractors, max_new_tokens=max_new_tokens)


@click.command("ruler")
@config_options
@eval_options(default_out="results/ruler")
@click.option("--tasks", "-t", default="all", show_default=True,
              help="Comma-separated tasks: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt,"
                   " paraphrase, paraphrase_distractors (or all).")
@click.option("--lengths", "-l", default="4k,16k", show_default=True,
              help="Context lengths in tokens (haystack + planted sentences; instructions and question come on top),"
                   " e.g. 4k,16k or 4096.")
@click.option("--samples", "-n", type=int, default=3, show_default=True,
              help="Samples per (task, length), each drawn afresh; every method answers the same ones.")
@haystack_option
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the samples: the same (task, length, sample) is the same input for every method and run.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Longest answer, in tokens (greedy). Default: per task, RULER's "
                   "(niah 128, vt 30, the paraphrased facts 32).")
def ruler(cfg, methods, out, resume, memory_limit, tasks, lengths, samples, haystack, seed, max_new_tokens):
    """RULER-style recall suite (Hsieh et al. 2024): synthetic retrieval tasks over context length.

    \b
    Tasks (RULER's names): niah_single_1 (noise haystack, word key, 7-digit number), niah_single_2 (essay
    haystack, number), niah_single_3 (essay, uuid), niah_multikey_1 (essay, 3 look-alike needles with other
    keys), niah_multikey_2 / _3 (the whole context is needles; word / uuid keys), niah_multivalue (4 values
    under one key), niah_multiquery (4 keys in one question), vt (variable tracking: a 4-hop chain
    "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ...), paraphrase (NoLiMa-style: the question shares no
    word with the fact but its name) and paraphrase_distractors (+3 look-alike facts).
    Every reply starts with RULER's answer prefix. Scored as RULER: per sample the share of the reference
    answers found in the reply (case-insensitive), averaged over samples, in percent.
    Writes OUT/ruler.json (every sample, saved as it finishes; --resume skips finished ones), OUT/ruler.png
    (one task x length heatmap per method) and prints the score table.
    Example:  symphony eval ruler --tasks niah_single_2,vt --lengths 4k,16k --samples 3 --methods full,symphony
    """
    from symphony.errors import SymphonyError
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.ruler import run_ruler
    from symphony.evaluation.ruler_tasks import parse_tasks

    if samples < 1:
        raise SymphonyError(f"--samples must be at least 1, got {samples}")
    run_ruler(cfg, methods, out, resume=resume, memory_limit=memory_limit, tasks=parse_tasks(tasks),
              lengths=parse_lengths(lengths), samples=samples, seed=seed, haystack=haystack,
              max_new_tokens=max_new_tokens)


@click.command("ppl")
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
def ppl(cfg, methods, out, resume, memory_limit, text, dataset, split, text_field, max_tokens, bucket,
            full_window, stride):
    """Streaming perplexity over one long text; every method scores the same tokens.

    \b
    sinks / symphony stream the text through their bounded caches; full uses the model's whole
    context window (a sliding window with stride window/2 once the text is longer than it).
    Writes OUT/ppl.json (one row per method, saved as each finishes; --resume skips finished methods,
    plus mean NLL per --bucket positions) and OUT/ppl.png, and prints a table. Under
    `accelerate launch --num_processes N -m symphony.cli.main eval ppl ...` the methods are split across the
    processes and merged into the same OUT/ppl.json.
    Example:  symphony eval ppl --max-tokens 16384 --methods full,sinks,symphony
    """
    from symphony.evaluation.ppl import run_ppl

    run_ppl(cfg, methods, out, resume=resume, memory_limit=memory_limit, text=text, dataset=dataset, split=split,
            text_field=text_field, max_tokens=max_tokens, bucket=bucket, full_window=full_window, stride=stride)


@click.command("integrity")
@config_options
@eval_options(default_out="results/integrity")
@click.option("--prefix-tokens", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Length of the unrelated prefix streamed through the cache before each prompt (0: skip).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=48, show_default=True,
              help="Longest answer, in tokens (greedy decoding).")
@click.option("--only", default="", help="Comma-separated check names to run (default: the whole battery).")
def integrity(cfg, methods, out, resume, memory_limit, prefix_tokens, max_new_tokens, only):
    """Run a fixed battery of 32 checkable prompts (knowledge, arithmetic, instructions, code that must parse)
    on the base model and through Symphony, at short context and after a long unrelated prefix."""
    from symphony.runtime.engine import engine_from_config
    from symphony.evaluation.integrity import BATTERY, run_integrity, summarize
    from symphony.evaluation.results import ResultStore
    from symphony.evaluation.shards import single_process_only

    from symphony.errors import SymphonyError

    single_process_only("integrity", "is 32 short prompts, too few to be worth splitting")
    checks = BATTERY
    if only:
        names = {n.strip() for n in only.split(",") if n.strip()}
        unknown = names - {c.name for c in BATTERY}
        if unknown:
            raise SymphonyError(f"unknown check(s) {', '.join(sorted(unknown))}; see symphony/evaluation/integrity.py")
        checks = tuple(c for c in BATTERY if c.name in names)
    store = ResultStore(out / "integrity.json", ("name",),
                        meta={"model": cfg.model.name, "config": cfg.to_dict(), "prefix_tokens": prefix_tokens},
                        resume=resume)
    engine = engine_from_config(cfg, policy="symphony", progress=False)
    extra = lambda rows: {"checks": rows, "summary": summarize(rows)}  # noqa: E731
    run_integrity(engine, prefix_tokens, max_new_tokens, checks,
                  on_row=lambda row: store.add(row, extra), done=lambda name: store.has(name=name))
    store.save(extra)
    s = summarize(store.rows)
    click.echo(f"\n{'category':<12} {'base':>6} {'symphony':>9} {'+prefix':>8} {'same':>6}")
    for cat, v in s["by_category"].items():
        fmt = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
        click.echo(f"{cat:<12} {fmt(v['base_ok']):>6} {fmt(v['symphony_ok']):>9} {fmt(v['symphony_long_ok']):>8}"
                   f" {fmt(v['same_output']):>6}")
    click.echo(f"{'all':<12} {s['base_ok']:.0%} {s['symphony_ok']:>8.0%} "
               f"{'-' if s['symphony_long_ok'] is None else format(s['symphony_long_ok'], '.0%'):>8} {s['same_output']:>6.0%}")
    click.echo(f"-> {out / 'integrity.json'}")


SUITES = {"oom": oom, "needle": needle, "ruler": ruler, "ppl": ppl, "integrity": integrity}
