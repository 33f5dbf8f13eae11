"""Options shared by every `symphony eval` suite."""
from __future__ import annotations

import functools
import math

import click

from symphony.cli.options import checkpoint_option
from symphony.runtime.policies import POLICIES, policies_help


def eval_options(default_out: str):
    """--methods, --out, --resume, --memory-limit, --checkpoint (plus --config/--set from the caller)."""

    def deco(fn):
        @click.option("--methods", "-m", default=",".join(POLICIES), show_default=True,
                      help=f"Comma-separated cache policies: {policies_help()}.")
        @click.option("--out", "-o", default=default_out, show_default=True, type=click.Path(file_okay=False),
                      help="Directory for the JSON results and PNG plots.")
        @click.option("--resume", is_flag=True, help="Continue an interrupted run: finished cells are kept, not redone.")
        @click.option("--memory-limit", default=None, metavar="SIZE",
                      help="e.g. 8GB. Measurements projected above it are recorded as over_limit instead of run. "
                           "Default: 80% of free RAM (or of free GPU memory on CUDA).")
        @checkpoint_option
        @functools.wraps(fn)
        def wrapper(*args, methods, out, resume, memory_limit, **kwargs):
            from symphony.evaluation.limits import parse_memory_limit
            from symphony.evaluation.methods import parse_methods
            from symphony.io import ensure_writable_dir

            methods = parse_methods(methods)
            if memory_limit is not None:
                parse_memory_limit(memory_limit)
            out = ensure_writable_dir(out, "--out")  # before any work: results must have somewhere to go
            return fn(*args, methods=methods, out=out, resume=resume, memory_limit=memory_limit, **kwargs)

        return wrapper

    return deco


def positive_finite(ctx, param, value):
    """click callback for a float option that must be positive and finite (FloatRange lets nan and inf through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive, finite number, got {value}")
    return value
