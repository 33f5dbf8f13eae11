"""Click options shared by the CLI and the eval suites (a module of its own, so `cli/evals.py` can import it
without importing the CLI that imports them)."""
from __future__ import annotations

import functools

import click


def config_options(fn):
    """--config and --set, shared by every command that needs a config."""

    @click.option("--config", "-c", "config_name", default="smollm2-135m", show_default=True,
                  help="Preset name (tiny, smollm2-135m, smollm2-135m-cpu, qwen2.5-1.5b, qwen2.5-7b-8gb) or a YAML file.")
    @click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a config key, e.g. --set cache.window=2048 (repeatable).")
    @functools.wraps(fn)
    def wrapper(*args, config_name, overrides, **kwargs):
        from symphony.config import load_config

        return fn(*args, cfg=load_config(config_name, overrides), **kwargs)

    return wrapper


def checkpoint_option(fn):
    """--checkpoint DIR: load trained memory adapters (sets `memory.checkpoint`; needs `cfg` from config_options)."""

    @click.option("--checkpoint", default=None, type=click.Path(),
                  help="Trained memory adapters: a phase run's directory (its final/ or newest phaseN/ is used) "
                       "or an adapter directory. Used by the symphony method; baselines stay the base model.")
    @functools.wraps(fn)
    def wrapper(*args, checkpoint, **kwargs):
        if checkpoint is not None:
            from symphony.memory.checkpoint import find_checkpoint

            kwargs["cfg"].memory.checkpoint = str(find_checkpoint(checkpoint))  # fail now, not after loading
        return fn(*args, **kwargs)

    return wrapper
