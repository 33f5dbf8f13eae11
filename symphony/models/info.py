"""Facts about a model read from its config: context window, KV bytes per token, parameter counts."""
from __future__ import annotations

from collections import Counter


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


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
