"""Cache policies: which cache a stream gets, and what the rest of Symphony needs to know about it.

One small class per policy, registered by name in `POLICIES`. The engine builds its streams through the
policy; config validation, the CLI's `--policy`, the evals' `--methods`, their memory projections and
their plots all read this registry, so a new policy is one class (here, or anywhere with
`register_policy`) and nothing else:

    @register_policy
    class RecentPolicy(CachePolicy):
        name, help = "recent", "the most recent tokens only, at the same slot budget"

        def make_stream(self, engine, persistent=0):
            c = engine.cache_cfg
            cache = BoundedCache.for_model(engine.model, 0, 0, c.sinks + c.ledger + c.window, c.span_len)
            return Stream(cache, None)

Importing this module stays cheap (no torch, so `symphony.config` can validate against it): the caches
are built inside `make_stream`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from symphony.config import CacheConfig
    from symphony.runtime.engine import StreamingEngine
    from symphony.runtime.stream import Stream

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a --methods list item and a file name part (needle_<name>.png)


class CachePolicy:
    """What a policy declares. Subclasses set the class attributes and override `make_stream`."""

    name: str = ""
    help: str = ""  # one line, for --help
    # a fixed slot budget (`capacity`) at any input length; False: the cache grows with the input (evals then
    # project its memory from the length and give it the model's context window instead of a budget)
    bounded: bool = True
    # the model's memory adapters, pointer heads and persistent memory take part; False: the bare base model
    uses_memory: bool = False
    color: str | None = None  # in the evals' plots; None: matplotlib's colour cycle

    def make_stream(self, engine: StreamingEngine, persistent: int = 0) -> Stream:
        """A fresh stream with this policy's cache; `persistent` slots come first (the engine fills them)."""
        raise NotImplementedError

    def capacity(self, cache_cfg: CacheConfig, persistent: int = 0) -> int | None:
        """Slots a compacted cache holds: every bounded policy gets the same budget, sinks + ledger + window,
        plus the persistent-memory slots; None when unbounded."""
        if not self.bounded:
            return None
        return cache_cfg.sinks + cache_cfg.ledger + cache_cfg.window + persistent

    def knowledge_slots(self, cache_cfg: CacheConfig, persistent: int = 0) -> int:
        """Slots `SymphonyModel` reports knowledge attention over (persistent + ledger); 0 without a ledger."""
        return 0


POLICIES: dict[str, CachePolicy] = {}


def register_policy(cls: type[CachePolicy]) -> type[CachePolicy]:
    """Class decorator: make the policy `cls.name` available everywhere (engine, config, CLI, evals)."""
    if not (isinstance(cls, type) and issubclass(cls, CachePolicy)):
        raise TypeError(f"a cache policy must subclass CachePolicy; got {cls!r}")
    if not _NAME.fullmatch(cls.name or ""):
        raise ValueError(f"cache policy name {cls.name!r} must be lower-case letters, digits, '_' or '-'")
    if cls.name in POLICIES:
        raise ValueError(f"cache policy {cls.name!r} is registered already")
    POLICIES[cls.name] = cls()
    return cls


def get_policy(name: str) -> CachePolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name]


def policies_help() -> str:
    """'name (help), ...' of every registered policy, for an option's help text."""
    return ", ".join(f"{p.name} ({p.help})" for p in POLICIES.values())


@register_policy
class FullPolicy(CachePolicy):
    name = "full"
    help = "DynamicCache: every token kept, memory grows with the input"
    bounded = False
    color = "tab:red"

    def make_stream(self, engine, persistent=0):
        from transformers import DynamicCache

        from symphony.runtime.stream import Stream

        return Stream(DynamicCache(config=engine.model.config), None)


@register_policy
class SinksPolicy(CachePolicy):
    name = "sinks"
    help = "StreamingLLM: the first tokens and one recent window at the same slot budget"
    color = "tab:orange"

    def make_stream(self, engine, persistent=0):
        from symphony.runtime.cache import BoundedCache
        from symphony.runtime.stream import Stream

        c = engine.cache_cfg
        return Stream(BoundedCache.for_model(engine.model, c.sinks, 0, c.ledger + c.window, c.span_len), None)


@register_policy
class SymphonyPolicy(CachePolicy):
    name = "symphony"
    help = "sinks, salient spans and a recent window, with recall of evicted spans and the trained memories"
    uses_memory = True
    color = "tab:blue"

    def make_stream(self, engine, persistent=0):
        from symphony.runtime.cache import BoundedCache
        from symphony.runtime.recall import RecallLedger
        from symphony.runtime.salience import RarityOracle
        from symphony.runtime.stream import Stream

        c, s = engine.cache_cfg, engine.salience_cfg
        # persistent slots come first and count as extra sinks: never evicted, never moved (never re-rotated)
        cache = BoundedCache.for_model(engine.model, c.sinks + persistent, c.ledger, c.window, c.span_len,
                                       s.smooth_radius)
        recall = RecallLedger.for_cache(c, engine.retriever)
        if recall is not None:
            cache.on_archive = recall.add
        return Stream(cache, RarityOracle(s), recall=recall)

    def knowledge_slots(self, cache_cfg, persistent=0):
        return persistent + cache_cfg.ledger
