"""`symphony plan`: the VRAM budget of a model and the cache split that fits (config only, no weights).

Register it on the main group with `main.add_command(plan)`. This module does not import `symphony.cli`,
so that registration works from either side without an import cycle; its --config/--set options
mirror the shared `config_options` of the main CLI.
"""
from __future__ import annotations

import functools

import click


def _config_options(fn):
    """--config and --set, exactly as symphony.cli.config_options declares them."""

    @click.option("--config", "-c", "config_name", default="smollm2-135m", show_default=True,
                  help="Preset name (tiny, smollm2-135m, qwen2.5-1.5b, qwen2.5-7b-8gb) or a YAML file.")
    @click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a config key, e.g. --set cache.window=2048 (repeatable).")
    @functools.wraps(fn)
    def wrapper(*args, config_name, overrides, **kwargs):
        from symphony.config import load_config

        return fn(*args, cfg=load_config(config_name, overrides), **kwargs)

    return wrapper


@click.command()
@_config_options
@click.option("--vram", default="8GB", show_default=True, metavar="SIZE",
              help="GPU memory to plan for, e.g. 8GB, 7.5GiB, 24GB (GB means GiB).")
@click.option("--model-config", "model_config", type=click.Path(exists=True), default=None, metavar="PATH",
              help="Plan for this model instead: a config.json file or a directory holding one (offline).")
@click.option("--segment-len", type=click.IntRange(min=1), default=None,
              help="Tokens per prefill forward (default: cache.segment_len of the config).")
def plan(cfg, vram, model_config, segment_len):
    """Plan the VRAM budget: weights, activations, overhead and how many cache slots fit in --vram.

    \b
    Reads only the model's config (no weights); prints the budget table, a ready-to-paste
    --set line for the sinks/ledger/window split, and whether the configured cache fits.
    Example:  symphony plan --config qwen2.5-7b-8gb --vram 8GB --model-config ./Qwen2.5-7B-Instruct
    """
    from symphony.planner import plan_for, render_plan

    report = plan_for(cfg, vram, model_config=model_config, segment_len=segment_len)
    for line in render_plan(report):
        click.echo(line)
