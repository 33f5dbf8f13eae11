"""Memory planner: from a model config, a dtype/quantisation and a memory limit, the slot budget that fits.

All figures are estimates from the config (no weights are loaded); the OOM eval measures the real thing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from symphony.errors import SymphonyError
from symphony.models.info import head_dim, kv_bytes_per_token

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def parse_size(text: str | int | float) -> int:
    """'8GB', '7.5 GiB', '512MB', 1024 -> bytes (GB means GiB, as GPU sizes are quoted)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise SymphonyError(f"cannot read memory size '{text}'; use e.g. 8GB, 7.5GiB or 512MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class Plan:
    limit: int
    weights: int
    activations: int
    memories: int
    overhead: int
    kv_per_token: int
    slots: int  # cache slots that fit (sinks + ledger + window), after one segment of headroom
    segment_len: int

    @property
    def cache(self) -> int:
        return (self.slots + self.segment_len) * self.kv_per_token

    @property
    def headroom(self) -> int:
        return self.limit - self.weights - self.activations - self.memories - self.overhead - self.cache

    def split(self, sinks: int = 4, ledger_fraction: float = 0.25) -> dict[str, int]:
        usable = max(0, self.slots - sinks)
        ledger = int(usable * ledger_fraction)
        return {"sinks": min(sinks, self.slots), "ledger": ledger, "window": usable - ledger}


def weight_bytes(n_params: int, n_embedding: int, dtype_bytes: int, quantization: str) -> int:
    """bitsandbytes quantises the decoder's Linear layers; embeddings and lm_head stay in the compute dtype."""
    if quantization == "none":
        return n_params * dtype_bytes
    per_param = {"4bit": 0.5 + 4 / 64, "8bit": 1.0 + 4 / 4096}[quantization]  # + absmax/row scales
    return int((n_params - n_embedding) * per_param + n_embedding * dtype_bytes)


def activation_bytes(config, segment_len: int, slots: int, dtype_bytes: int) -> int:
    """Peak transient memory of one segment's forward: hidden states, MLP, attention scores, fp32 logits."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    s = segment_len
    hidden = 4 * s * c.hidden_size * dtype_bytes
    mlp = 3 * s * c.intermediate_size * dtype_bytes
    scores = c.num_attention_heads * s * (slots + s) * 4  # worst case: a non-fused attention in fp32
    qkv = s * (c.num_attention_heads + 2 * (getattr(c, "num_key_value_heads", None) or c.num_attention_heads)) * head_dim(c) * dtype_bytes
    logits = 2 * s * c.vocab_size * 4  # fp32 logits + log-softmax for salience
    return hidden + mlp + scores + qkv + logits


def make_plan(config, n_params: int, n_embedding: int, dtype: str, quantization: str, limit: int,
              segment_len: int, memories: int = 0, overhead: int | None = None) -> Plan:
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_dtype_bytes = 2 if quantization != "none" and dtype == "float32" else dtype_bytes
    per_token = kv_bytes_per_token(config, kv_dtype_bytes)
    weights = weight_bytes(n_params, n_embedding, dtype_bytes, quantization)
    overhead = int(overhead if overhead is not None else min(0.08 * limit, 600 << 20))  # CUDA context, allocator slack
    # activations grow with slots (attention scores), so solve for slots by a short fixed-point iteration
    slots = 0
    for _ in range(20):
        act = activation_bytes(config, segment_len, slots, dtype_bytes)
        free = limit - weights - act - memories - overhead - segment_len * per_token
        new = max(0, int(free // per_token))
        if new == slots:
            break
        slots = new
    act = activation_bytes(config, segment_len, slots, dtype_bytes)
    while slots > 0 and weights + act + memories + overhead + (slots + segment_len) * per_token > limit:
        slots -= max(1, slots // 100)
        act = activation_bytes(config, segment_len, slots, dtype_bytes)
    return Plan(limit, weights, act, memories, overhead, per_token, slots, segment_len)


def embedding_params(config) -> int:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = c.vocab_size * c.hidden_size
    return n if getattr(c, "tie_word_embeddings", False) else 2 * n
