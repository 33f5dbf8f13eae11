"""A memory adapter: a gated parallel branch beside a decoder layer's MLP.

    mlp_out' = mlp_out + gate · memory(x)          x: the MLP's input (the post-attention-normed hidden state)

`gate` is one scalar parameter, initialised to exactly 0.0, so an injected, untrained model computes
bit for bit what the base model computes (0 · finite = 0 and y + 0 = y). The memory (any kind in
`symphony.memory.kinds`; this class uses only its `Memory` interface) normalises its own input and ends in a
random output projection: without the zero gate the branch would change the model at once.

The adapter is attached with a forward hook on the MLP and registered as the MLP's child
`memory_adapter`, so the MLP object and every base parameter name stay as they were (the base
checkpoint still loads into the injected model) and the adapter's parameters appear in
`model.state_dict()` under `...mlp.memory_adapter.*`.

Two ways to write. By default every token that passes through is written (`memory(x, state)`: the
training path without a cache). With `defer_writes` (the streaming engine's bounded cache) a forward
only reads the memory and keeps its input rows in `pending`, one per cache slot; when the cache evicts
slots, `evict(keep)` writes exactly the evicted rows into the memory, in stream order. The memory then
holds what the cache no longer does, and `pending` is bounded by the cache's slot count.

The memory's recurrent state lives on the adapter between forward calls (one stream at a time). A
caller serving several streams swaps them in and out with `state` (see `symphony.memory.inject.
memory_states` / `set_memory_states`, which the streaming engine uses); `reset_state()` starts afresh.
Adapter parameters are float32 (float64 for a float64 model) whatever the base model's dtype: the
MLP input is cast up, the branch's output cast back to the MLP output's dtype.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from symphony.memory.state import state_tensors

ATTR = "memory_adapter"  # the adapter's name as a child of the MLP


class MemoryAdapter(nn.Module):
    calibrated_parameters = ("gate",)  # phase 6 calibrates the gate (and what the memory itself declares)

    def __init__(self, memory: nn.Module, kind: str, layer_idx: int, gate_init: float = 0.0):
        super().__init__()
        self.memory = memory
        self.kind = kind
        self.layer_idx = layer_idx
        self.gate = nn.Parameter(torch.tensor(float(gate_init), dtype=self._param_dtype()))
        self.state: Any = None  # the memory's recurrent state for the current stream (None = fresh)
        self.enabled = True  # False: the MLP's output passes through untouched and the state is not written
        self.defer_writes = False  # True: read only; inputs wait in `pending` until `evict` writes them
        self.pending: Tensor | None = None  # [B, slots, dim] inputs of the tokens the cache still holds
        self._handle = None

    def _param_dtype(self) -> torch.dtype:
        p = next(self.memory.parameters(), None)
        return p.dtype if p is not None else torch.float32

    # -- attach / detach ---------------------------------------------------------------------------
    def attach(self, mlp: nn.Module) -> "MemoryAdapter":
        if hasattr(mlp, ATTR):
            raise ValueError(f"{type(mlp).__name__} already has a memory adapter")
        setattr(mlp, ATTR, self)  # registers the adapter as the MLP's child (state_dict, .to(), parameters())
        self._handle = mlp.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach_from(self, mlp: nn.Module) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if getattr(mlp, ATTR, None) is self:
            delattr(mlp, ATTR)

    def _hook(self, _mlp, args, kwargs, output):
        if not self.enabled:
            return output
        x = args[0] if args else next(iter(kwargs.values()))
        if isinstance(output, tuple):  # MoE blocks return (hidden, router_logits)
            return (self.mix(output[0], x),) + tuple(output[1:])
        return self.mix(output, x)

    # -- the branch --------------------------------------------------------------------------------
    def mix(self, mlp_out: Tensor, x: Tensor) -> Tensor:
        """mlp_out + gate · memory(x); carries the memory state to the next call."""
        self._check_batch(x.shape[0])
        x = x.to(self.gate.dtype)
        if self.defer_writes:
            read = self.memory.read(x, self.state)
            self.pending = x if self.pending is None else torch.cat([self.pending, x], dim=1)
        else:
            read, self.state = self.memory(x, self.state)
        return mlp_out + (self.gate * read).to(mlp_out.dtype)

    def evict(self, keep: Tensor) -> int:
        """The cache kept slots `keep` (indices, stream order) of the `pending` rows: write the others into
        the memory, in stream order, and keep the survivors' rows aligned with the cache. Returns rows written."""
        if self.pending is None:
            return 0
        n = self.pending.shape[1]
        keep = keep.to(self.pending.device)
        gone = torch.ones(n, dtype=torch.bool, device=self.pending.device)
        gone[keep] = False
        written = int(gone.sum())
        if written:
            self.state = self.memory.write(self.pending[:, gone], self.state)
        self.pending = self.pending[:, keep]
        return written

    def _check_batch(self, batch: int) -> None:
        if self.state is None:
            return
        first = next(state_tensors(self.state), None)
        if first is not None and first.shape[0] != batch:
            raise ValueError(
                f"memory adapter of layer {self.layer_idx} holds a state for batch {first.shape[0]} but got batch"
                f" {batch}; reset it first (symphony.memory.inject.reset_memory_states(model))"
            )

    # -- state -------------------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.state = None
        self.pending = None

    def state_nbytes(self, batch: int = 1) -> int:
        return self.memory.state_nbytes(batch)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, layer={self.layer_idx}"
