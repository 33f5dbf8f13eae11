"""Persistent memory: learned task tokens that sit in the first slots of the bounded cache, for good.

Titans' third memory ("persistent memory": task knowledge independent of the input) as input embeddings:
`PersistentMemory(num_tasks, tokens, hidden)` holds one parameter `embeddings` [num_tasks, tokens, hidden].
When a stream starts (`StreamingEngine.new_stream(task_id=t)`, `symphony` policy only) the engine feeds
`embeddings[t]` through the model as `inputs_embeds`, before any real token, so their keys/values occupy
cache slots 0..tokens-1. The BoundedCache treats them as extra attention sinks: they are never evicted and
never move, so their keys are never re-rotated, and every later token attends to them like to a prompt
the model was trained to read.

Their KV depends on the parameters only (the prefix comes first, sees only itself, and the memory adapters
read their fresh state), so the engine can recompute it with a graph after a truncated-BPTT cut: phase 7
trains the tokens through every segment of a sample, not only the first window.

Initialised (seeded, by `inject`) as copies of the input embeddings of random vocabulary tokens, so the
prefix starts in the distribution the model reads; unlike the zero-gated adapters, a non-empty prefix
changes the model's outputs from the start (as a system prompt would). `memory.persistent_tokens = 0`
(the default) attaches nothing: the model is exactly the model without this feature.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

PERSISTENT_ATTR = "symphony_persistent"  # the module's name on the model (and its checkpoint key prefix)


class PersistentMemory(nn.Module):
    def __init__(self, num_tasks: int, tokens: int, hidden_size: int, init: Tensor | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if num_tasks < 1 or tokens < 1 or hidden_size < 1:
            raise ValueError(f"PersistentMemory needs num_tasks, tokens and hidden_size >= 1; got "
                             f"{num_tasks}, {tokens}, {hidden_size}")
        if init is None:
            init = torch.randn(num_tasks, tokens, hidden_size) * 0.02
        if tuple(init.shape) != (num_tasks, tokens, hidden_size):
            raise ValueError(f"init has shape {list(init.shape)}; expected {[num_tasks, tokens, hidden_size]}")
        self.embeddings = nn.Parameter(init.detach().clone().to(dtype))

    @property
    def num_tasks(self) -> int:
        return self.embeddings.shape[0]

    @property
    def tokens(self) -> int:
        return self.embeddings.shape[1]

    @classmethod
    def from_embeddings(cls, embedding: nn.Module, num_tasks: int, tokens: int, vocab_size: int,
                        dtype: torch.dtype = torch.float32) -> "PersistentMemory":
        """Initialised as copies of the input embeddings of random tokens (uses the global RNG: seed it first).
        Falls back to small random vectors when the embedding table cannot be read as floats."""
        ids = torch.randint(0, max(1, vocab_size), (num_tasks, tokens))
        weight = getattr(embedding, "weight", None)
        hidden = getattr(embedding, "embedding_dim", None) or (weight.shape[-1] if weight is not None else None)
        try:
            with torch.no_grad():
                init = embedding(ids.to(weight.device if weight is not None else "cpu")).float().cpu()
            if not torch.isfinite(init).all():
                raise ValueError
        except Exception:  # e.g. a quantized table: start small and random instead
            init = torch.randn(num_tasks, tokens, int(hidden)) * 0.02
        return cls(num_tasks, tokens, init.shape[-1], init, dtype=dtype)

    def check_task(self, task_id: int) -> int:
        task_id = int(task_id)
        if not 0 <= task_id < self.num_tasks:
            raise IndexError(f"task id {task_id} is out of range: this model has {self.num_tasks} persistent-memory "
                             f"task(s), ids 0..{self.num_tasks - 1}")
        return task_id

    def forward(self, task_id: int) -> Tensor:
        """The task's persistent token embeddings [tokens, hidden]."""
        return self.embeddings[self.check_task(task_id)]

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, tokens={self.tokens}, hidden={self.embeddings.shape[-1]}"


def persistent_memory(model: nn.Module) -> PersistentMemory | None:
    """The model's persistent memory (None when it has none)."""
    pm = getattr(model, PERSISTENT_ATTR, None)
    return pm if isinstance(pm, PersistentMemory) else None
