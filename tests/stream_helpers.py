"""Helpers shared by the tests that stream tiny models through the engine with memory adapters."""
from __future__ import annotations

import dataclasses

import torch

from symphony.runtime.engine import StreamingEngine

# small memories so the tiny model's tests stay fast
SMALL = ["memory.fhrr.holo_dim=32", "memory.chunk_size=16", "memory.titans.hidden=16"]


def ids_for(n: int, seed: int = 0) -> torch.Tensor:
    """n random token ids of the tiny vocabulary, the same for the same seed."""
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def engine(model, cfg, policy="symphony", **cache) -> StreamingEngine:
    """A streaming engine over `model` with cfg's cache, overridden by `cache` keys."""
    return StreamingEngine(model, None, dataclasses.replace(cfg.cache, **cache), cfg.salience, policy=policy)


def segment_logits(eng: StreamingEngine, stream, ids: torch.Tensor) -> torch.Tensor:
    """Ingest ids into stream; the logits of every segment, concatenated."""
    out = []
    eng.ingest(stream, ids, on_segment=lambda s, seg, logits: out.append(logits.clone()))
    return torch.cat(out)
