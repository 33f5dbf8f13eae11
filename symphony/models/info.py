"""Facts about a model read from its config: context window, KV bytes per token, parameter counts."""
from __future__ import annotations

from collections import Counter


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(model):
    """The list of decoder blocks of an HF causal LM (Llama/Qwen2/Mistral-style `model.model.layers`)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers on {type(model).__name__}")
    return layers


def head_dim(config) -> int:
    c = _text_config(config)
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def kv_heads(config) -> int:
    c = _text_config(config)
    return getattr(c, "num_key_value_heads", None) or c.num_attention_heads


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of key+value cache one token costs across all layers."""
    c = _text_config(config)
    return 2 * c.num_hidden_layers * kv_heads(c) * head_dim(c) * dtype_bytes


def context_window(config) -> int:
    c = _text_config(config)
    return int(getattr(c, "max_position_embeddings", 0) or 0)


def parameter_counts(model) -> dict[str, int]:
    """Parameter counts by kind (embedding, attention, mlp, norm, other) plus total and trainable."""
    kinds: Counter[str] = Counter()
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        lname = name.lower()
        if "embed" in lname or "lm_head" in lname:
            kind = "embedding"
        elif "attn" in lname or "attention" in lname:
            kind = "attention"
        elif "mlp" in lname:
            kind = "mlp"
        elif "norm" in lname:
            kind = "norm"
        else:
            kind = "other"
        kinds[kind] += p.numel()
    total = sum(kinds.values())
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    return {"total": total, "trainable": trainable, **dict(sorted(kinds.items()))}


def highest_position(cache_cfg, persistent: int = 0) -> int:
    """Largest position id a bounded cache gives a token: slots run up to sinks + ledger + window (+ persistent
    slots) before compaction, plus one segment fed on top."""
    c = cache_cfg
    return c.sinks + c.ledger + c.window + persistent + c.segment_len - 1


def check_cache_in_context(cache_cfg, config, persistent: int = 0, advice: str | None = None) -> None:
    """Refuse a cache budget whose positions would run past the model's trained context (RoPE positions it never
    saw make the output silently wrong). `advice` replaces the suggested `--set` fix (an API names its own keywords)."""
    from symphony.errors import SymphonyError

    limit = context_window(config)
    top = highest_position(cache_cfg, persistent)
    if limit and top >= limit:
        c, excess = cache_cfg, top - limit + 1
        if advice is not None:
            fix = advice
        elif c.window > excess:
            fix = f"lower it: e.g. --set cache.window={c.window - excess}"
        elif c.ledger >= excess:
            fix = f"lower it: e.g. --set cache.ledger={c.ledger - excess}"
        else:
            fix = f"lower it: sinks + ledger + window + segment_len must stay at or below {limit:,}"
        raise SymphonyError(
            f"the cache budget reaches position {top:,} (sinks {c.sinks} + ledger {c.ledger} + window {c.window}"
            + (f" + persistent {persistent}" if persistent else "") + f" + segment_len {c.segment_len}), past the"
            f" model's {limit:,}-token context; {fix}")
