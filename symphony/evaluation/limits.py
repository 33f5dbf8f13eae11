"""Memory limits: a measurement that would not fit is recorded as `over_limit`, never attempted."""
from __future__ import annotations

import psutil
import torch

from symphony.errors import SymphonyError
from symphony.planner import activation_bytes, parse_size


def default_memory_limit(device: torch.device) -> int:
    """80% of free GPU memory on CUDA, else 80% of available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    return int(0.8 * psutil.virtual_memory().available)


def parse_memory_limit(text: str) -> int:
    """--memory-limit in bytes; a limit of nothing would record every cell as over_limit."""
    limit = parse_size(text)
    if limit <= 0:
        raise SymphonyError(f"--memory-limit must be more than 0, got '{text}'; use e.g. 8GB or 512MB")
    return limit


def resolve_memory_limit(text: str | None, device: torch.device) -> int:
    return parse_memory_limit(text) if text else default_memory_limit(device)


def projected_bytes(model, context_len: int, capacity: int | None, segment_len: int, kv_per_token: int,
                    base_bytes: int) -> int:
    """Peak memory a method would need at `context_len`: what the process holds already (weights,
    runtime) + the cache it would grow to (`capacity` slots, or the whole context when None: an
    unbounded policy) + one segment's activations."""
    slots = context_len + segment_len if capacity is None else capacity + segment_len
    return int(base_bytes + slots * kv_per_token + activation_bytes(model.config, segment_len, slots, model.dtype.itemsize))
