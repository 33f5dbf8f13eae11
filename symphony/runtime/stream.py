"""`Stream`: everything one conversation or document carries between engine calls (its cache, scorer, recall
ledger, memory states), and `peak_memory_bytes`, the process peak the CLI and evals report beside it."""
from __future__ import annotations

import resource
from dataclasses import dataclass, field

import torch

from symphony.memory import state_nbytes
from symphony.runtime.cache import cache_nbytes
from symphony.runtime.recall import RecallLedger
from symphony.runtime.salience import SalienceScorer


@dataclass
class Stream:
    """Everything one conversation/document stream carries between calls."""

    cache: object  # what the engine's policy built: BoundedCache, or DynamicCache for `full`
    scorer: SalienceScorer | None
    last_logits: torch.Tensor | None = None  # [V]: predicts the next token
    tokens_seen: int = 0
    recall: RecallLedger | None = None  # ids of evicted spans, re-read when a question needs them
    # per memory adapter: (recurrent state, inputs of the tokens the cache still holds), None: no adapters
    memory: list | None = None
    # persistent memory: the task whose tokens fill the cache's first `persistent` slots (fixed extra sinks;
    # their stream positions are -persistent..-1, so real tokens keep positions 0, 1, ...)
    task_id: int = 0
    persistent: int = 0
    # (index into `memory`, decoder layer) of every Titans adapter with manifold paging
    paged: tuple[tuple[int, int], ...] = ()
    # stream ranges [start, end) of questions, re-read spans and replies: the conversation, not the document,
    # so recall never re-reads them from the window (a previous question shares the next one's template
    # and would out-cover the archived fact); ranges older than the window are dropped
    conversation: list[tuple[int, int]] = field(default_factory=list)
    reread: list[int] = field(default_factory=list)  # token ids recall re-read for the last question (copy source)
    reply_prefix: list[int] = field(default_factory=list)  # the reply's start fed with the question (RULER's)

    @property
    def occupied(self) -> int:
        """Cache slots in use (persistent slots included)."""
        return self.cache.get_seq_length()

    def page_switches(self) -> dict[int, int]:
        """Manifold-paging page switches so far per decoder layer ({layer: switches summed over the layer's memory
        heads}), for the Titans adapters with paging (`memory.titans.pages > 1`); {} when there are none."""
        from symphony.memory.titans import TitansState, page_switches

        out: dict[int, int] = {}
        for i, layer in self.paged:
            state = self.memory[i][0] if self.memory is not None and i < len(self.memory) else None
            out[layer] = int(page_switches(state).sum()) if isinstance(state, TitansState) else 0
        return out

    def nbytes(self) -> int:
        """KV bytes held by the cache (the recall ledger's fixed id table is reported separately)."""
        return cache_nbytes(self.cache)

    def memory_nbytes(self) -> int:
        """Bytes of the memory adapters' states and of their not-yet-evicted inputs (bounded by the
        cache's slot count; 0 without adapters)."""
        return state_nbytes(self.memory) if self.memory is not None else 0


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA peak allocated on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
