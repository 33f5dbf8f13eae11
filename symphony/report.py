"""Human-readable facts about a configured model, without loading its weights."""
from __future__ import annotations

import torch

from symphony.config import SymphonyConfig
from symphony.models.info import check_cache_in_context, context_window, kv_bytes_per_token
from symphony.models.loading import load_config_only, resolve_device, resolve_dtype, resolve_source
from symphony.planner import recall_summary
from symphony.runtime.policies import get_policy


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TB"


def count_parameters_from_config(config) -> int:
    """Parameter count from a config alone: build the model on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def model_facts(cfg: SymphonyConfig) -> dict[str, str]:
    source = resolve_source(cfg.model.name)
    config = load_config_only(source, cfg.model.trust_remote_code)
    try:
        device = resolve_device(cfg.model.device)
    except Exception:  # info must work on a CPU machine for a CUDA preset
        device = torch.device("cpu")
    # quantisation shrinks the weights only: the KV cache keeps model.dtype (the non-quantised layers' dtype)
    kv_dtype = resolve_dtype(cfg.model.dtype, device)
    per_token = kv_bytes_per_token(config, kv_dtype.itemsize)
    c = cfg.cache
    if get_policy(c.policy).bounded:
        check_cache_in_context(c, config)
    slots = c.sinks + c.ledger + c.window + c.segment_len
    return {
        "model": cfg.model.name,
        "source": f"{source.kind}: {source.location}" + (f"/{source.gguf_file}" if source.gguf_file else ""),
        "architecture": ", ".join(getattr(config, "architectures", None) or [config.model_type]),
        "parameters": f"{count_parameters_from_config(config):,}",
        "layers": str(config.num_hidden_layers),
        "context window": f"{context_window(config):,} tokens",
        "KV cache per token": f"{fmt_bytes(per_token)} ({str(kv_dtype).replace('torch.', '')})",
        "bounded cache": f"{c.sinks} sinks + {c.ledger} ledger + {c.window} window (+{c.segment_len} segment)"
                         f" = {slots} slots = {fmt_bytes(slots * per_token)}, at any input length",
        "full cache at 128k": fmt_bytes(128 * 1024 * per_token),
        "recall archive": recall_summary(c, cfg.memory.retriever_dim),
        "artifacts": str(cfg.artifacts_path),
    }
