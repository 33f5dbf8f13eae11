"""Fixed-size memories for what the bounded cache evicts: FHRR holographic memory and Titans neural memory.

Both share one interface, `out, state = mem(hidden_states [B, S, dim], state, write_mask=None)`: state
None starts a fresh memory, the returned state carries across calls, its size never grows.
"""
from __future__ import annotations

from typing import Any

import torch

from symphony.memory.fhrr import FHRRConfig, FHRRMemory
from symphony.memory.titans import TitansConfig, TitansMemory, TitansState

__all__ = ["FHRRConfig", "FHRRMemory", "TitansConfig", "TitansMemory", "TitansState", "state_nbytes",
           "state_tensors", "detach_state"]


def state_tensors(state: Any):
    """The tensors of a memory state (any nesting of tuples, lists, dicts)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, (tuple, list)):
        for item in state:
            yield from state_tensors(item)
    elif isinstance(state, dict):
        for item in state.values():
            yield from state_tensors(item)


def state_nbytes(state: Any) -> int:
    """Bytes held by the tensors of a memory state."""
    return sum(t.nbytes for t in state_tensors(state))


def detach_state(state: Any) -> Any:
    """The same state cut from the autograd graph (truncated BPTT between segments)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    return state
