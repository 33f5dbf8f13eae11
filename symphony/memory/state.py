"""A memory's recurrent state is any nesting of tuples, lists, dicts and tensors; these walk it."""
from __future__ import annotations

from typing import Any

import torch


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
