"""`symphony eval integrity`: the wrapped model still knows what the base model knew."""
from __future__ import annotations

import click

from symphony.cli_options import config_options
from symphony.evaluation.options import eval_options


@click.command()
@config_options
@eval_options(default_out="results/integrity")
@click.option("--prefix-tokens", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Length of the unrelated prefix streamed through the cache before each prompt (0: skip).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=48, show_default=True,
              help="Longest answer, in tokens (greedy decoding).")
@click.option("--only", default="", help="Comma-separated check names to run (default: the whole battery).")
def command(cfg, methods, out, resume, memory_limit, prefix_tokens, max_new_tokens, only):
    """Run a fixed battery of 32 checkable prompts (knowledge, arithmetic, instructions, code that must parse)
    on the base model and through Symphony, at short context and after a long unrelated prefix."""
    from symphony.engine import engine_from_config
    from symphony.evaluation.integrity import BATTERY, run_integrity, summarize
    from symphony.evaluation.results import ResultStore

    from symphony.errors import SymphonyError

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
