"""What differs between the transformers 5.x releases Symphony runs on (5.17 on GPU images, the newest here).

The KV cache is passed to a model's forward as `cache` from transformers 5.2x on, where `past_key_values`
is deprecated (removed in 5.40); older 5.x releases take only `past_key_values`.
"""
from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(forward) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model) -> str:
    """The keyword `model.forward` / `model.generate` take the KV cache by: `cache` or `past_key_values`."""
    return _cache_kwarg_of(type(model).forward)


def with_cache(model, cache, **kwargs) -> dict:
    """`kwargs` plus the cache under the name this model's transformers expects."""
    return {**kwargs, cache_kwarg(model): cache}
