"""Attach memory adapters to a frozen HF causal LM, find them again, and swap their per-stream state.

    adapters = inject(model, cfg.memory)        # base frozen, zero-gated adapters on the configured layers
    states = memory_states(model)               # one stream's memory, to set back with set_memory_states

The adapters' checkpoints (save, load, find) are `symphony.memory.checkpoint`; the memory kinds, and how each
is built, are `symphony.memory.kinds`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from symphony.config import MemoryConfig, parse_layer_spec
from symphony.errors import SymphonyError
from symphony.memory.adapter import ATTR, MemoryAdapter
from symphony.memory.kinds import NONE, build_memory
from symphony.memory.persistent import PERSISTENT_ATTR, PersistentMemory, persistent_memory
from symphony.memory.pointer import PointerHeads
from symphony.memory.retriever import SpanRetriever

POINTER_ATTR = "symphony_pointer"
RETRIEVER_ATTR = "symphony_retriever"


# ---- finding things on a model -----------------------------------------------------------------------

def _decoder_layers(model):
    from symphony.models.info import decoder_layers

    try:
        return decoder_layers(model)
    except ValueError as e:
        raise SymphonyError(f"cannot inject memory adapters: {e}") from None


def _text_config(model):
    c = model.config
    return c.get_text_config() if hasattr(c, "get_text_config") else c


def memory_adapters(model: nn.Module) -> list[MemoryAdapter]:
    """The model's memory adapters, in layer order (empty when none is injected)."""
    return [m for m in model.modules() if isinstance(m, MemoryAdapter)]


def pointer_heads(model: nn.Module) -> PointerHeads | None:
    return getattr(model, POINTER_ATTR, None)


def retriever_of(model: nn.Module) -> SpanRetriever | None:
    return getattr(model, RETRIEVER_ATTR, None)


def has_memory(model: nn.Module) -> bool:
    return (bool(memory_adapters(model)) or pointer_heads(model) is not None or persistent_memory(model) is not None
            or retriever_of(model) is not None)


# ---- per-stream memory state -------------------------------------------------------------------------

def memory_states(model: nn.Module) -> list[Any]:
    """The current recurrent state of every adapter (layer order); None entries are fresh memories."""
    return [a.state for a in memory_adapters(model)]


def set_memory_states(model: nn.Module, states: list[Any] | None) -> None:
    """Install states read by `memory_states` (None: reset every adapter to a fresh memory)."""
    adapters = memory_adapters(model)
    if states is None:
        states = [None] * len(adapters)
    if len(states) != len(adapters):
        raise ValueError(f"got {len(states)} memory states for {len(adapters)} adapters")
    for a, s in zip(adapters, states):
        a.state = s


def reset_memory_states(model: nn.Module) -> None:
    set_memory_states(model, None)


@contextmanager
def adapters_off(model: nn.Module):
    """Run the bare base model inside the block (every adapter passes the MLP output through untouched)."""
    adapters = memory_adapters(model)
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters:
            a.enabled = True


# ---- injection ---------------------------------------------------------------------------------------

def _branch_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a branch beside `module` lives: its device; float32 (float64 for a float64 model) parameters."""
    p = next(module.parameters(), None)  # 4/8-bit weights are not floating point but sit on the right device
    device = p.device if p is not None else torch.device("cpu")
    if device.type == "meta":
        raise SymphonyError("cannot inject memory adapters into a model whose weights are offloaded (meta device)")
    f64 = any(q.dtype == torch.float64 for q in module.parameters())
    return device, (torch.float64 if f64 else torch.float32)


def inject(model: nn.Module, mem_cfg: MemoryConfig, seed: int = 0) -> list[MemoryAdapter]:
    """Freeze `model` and attach zero-gated memory adapters (and the pointer heads when `mem_cfg.pointer`, the
    retriever when `mem_cfg.retriever_dim > 0`, the persistent memory as `model.symphony_persistent` when
    `mem_cfg.persistent_tokens > 0`).

    Only the new parameters require grad. Initialisation is seeded (same seed, same adapters) and does not
    touch the global RNG. Returns the adapters in layer order ([] for kind none)."""
    if has_memory(model):
        raise SymphonyError("this model already has memory adapters; inject into a freshly loaded model")
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _decoder_layers(model)
    tc = _text_config(model)
    dim, heads = tc.hidden_size, tc.num_attention_heads
    adapters: list[MemoryAdapter] = []
    # built on the CPU from a seeded generator, then moved; the base was frozen above, so the new
    # parameters keep their own requires_grad (True, except what a memory's config holds fixed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if mem_cfg.kind != NONE:
            for i in parse_layer_spec(mem_cfg.layers, len(layers)):
                mlp = getattr(layers[i], "mlp", None)
                if mlp is None:
                    raise SymphonyError(f"decoder layer {i} of {type(model).__name__} has no `mlp` to attach to")
                device, dtype = _branch_placement(mlp)
                memory = build_memory(mem_cfg, dim, heads).to(device=device, dtype=dtype)
                adapter = MemoryAdapter(memory, mem_cfg.kind, i, mem_cfg.gate_init).to(device)
                adapters.append(adapter.attach(mlp))
        if mem_cfg.pointer:
            device, dtype = _branch_placement(model)
            embed = model.get_input_embeddings().embedding_dim
            setattr(model, POINTER_ATTR, PointerHeads(dim, embed).to(device=device, dtype=dtype))
        if mem_cfg.retriever_dim > 0:
            device, _ = _branch_placement(model)
            retriever = SpanRetriever(dim, mem_cfg.retriever_dim, mem_cfg.retriever_layer)
            setattr(model, RETRIEVER_ATTR, retriever.to(device=device))
        if mem_cfg.persistent_tokens > 0:
            table = model.get_input_embeddings()
            device, dtype = _branch_placement(table)  # beside the embedding table its rows are fed in place of
            vocab = getattr(tc, "vocab_size", None) or getattr(table, "num_embeddings", 1)
            pm = PersistentMemory.from_embeddings(table, mem_cfg.num_tasks, mem_cfg.persistent_tokens, vocab, dtype)
            setattr(model, PERSISTENT_ATTR, pm.to(device=device))
    return adapters


def remove_adapters(model: nn.Module) -> None:
    """Undo `inject`: detach every adapter, the pointer heads and the persistent memory (the base model is left as
    loaded)."""
    for layer in _decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        adapter = getattr(mlp, ATTR, None) if mlp is not None else None
        if isinstance(adapter, MemoryAdapter):
            adapter.detach_from(mlp)
    if pointer_heads(model) is not None:
        delattr(model, POINTER_ATTR)
    if retriever_of(model) is not None:
        delattr(model, RETRIEVER_ATTR)
    if persistent_memory(model) is not None:
        delattr(model, PERSISTENT_ATTR)


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (MemoryAdapter, PointerHeads, PersistentMemory, SpanRetriever))]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in _adapter_modules(model) for p in m.parameters()]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter / pointer tensor, keyed by its name inside the model."""
    out: dict[str, torch.Tensor] = {}
    for name, module in _adapter_modules(model):
        for key, t in module.state_dict().items():
            out[f"{name}.{key}"] = t
    return out


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
