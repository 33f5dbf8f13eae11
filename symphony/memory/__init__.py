"""Fixed-size memories for what the bounded cache evicts: FHRR holographic memory and Titans neural memory.

Every kind shares one interface (`symphony.memory.kinds.Memory`), `out, state = mem(hidden_states [B, S, dim],
state, write_mask=None)`: state None starts a fresh memory, the returned state carries across calls, its size
never grows. `symphony.memory.kinds` lists the kinds. Names are imported on first use, so that the config (which
reads the kinds' settings) does not load torch.
"""
from __future__ import annotations

from symphony import lazy_exports

_PUBLIC = {
    "FHRRConfig": "symphony.memory.fhrr",
    "FHRRMemory": "symphony.memory.fhrr",
    "TitansConfig": "symphony.memory.titans",
    "TitansMemory": "symphony.memory.titans",
    "TitansState": "symphony.memory.titans",
    "state_nbytes": "symphony.memory.state",
    "state_tensors": "symphony.memory.state",
    "detach_state": "symphony.memory.state",
}
__all__ = sorted(_PUBLIC)


__getattr__ = lazy_exports(__name__, _PUBLIC)
