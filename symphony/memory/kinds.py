"""The memory kinds: what `memory.kind` may name, and everything the rest of Symphony needs to know about each.

A kind's entry (`MemoryKind`) gives
- its settings: a dataclass of the kind's own hyperparameters, which the config offers as `memory.<kind>.*`
  (`memory.fhrr.holo_dim`, `memory.titans.pages`, ...). Keys every kind shares (`memory.heads`,
  `memory.chunk_size`, `memory.layers`, ...) stay in `MemoryConfig` itself;
- how to build its module for one decoder layer, from those settings, the model's hidden size, the memory
  heads and the chunk size;
- the flat key names its settings had before kinds had sections (`memory.titans_pages`), so that old configs,
  `--set` options and run manifests still read, and what a recorded config that lacks a key was built with.

The module itself satisfies `Memory` and declares, in `calibrated_parameters`, the gate/decay parameters phase 6
calibrates. Adding a memory kind is its module plus one entry in `KINDS`; the config's `memory.<kind>` section,
validation, injection, checkpoints, the planner and phase 6 all read it from here.

This module does not import torch (the config reads it); the builders import their module when called.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from symphony.errors import SymphonyError

if TYPE_CHECKING:
    from torch import Tensor, nn

NONE = "none"  # memory.kind none: no memory adapters (the bare base model)


class Memory(Protocol):
    """A memory module, as `MemoryAdapter` (memory/adapter.py), the streaming engine and the planner use it: an
    `nn.Module` on x = the MLP input [B, S, dim] (float32, or float64 for a float64 model), whose recurrent state
    has a fixed size whatever the number of tokens written. Every state argument may be None: a fresh memory
    (`init_state`)."""

    # names of its parameters or submodules (all their parameters) that phase 6 calibrates: its gates and
    # decay/forget rates, e.g. ("to_beta", "decay_w"); () when it has none
    calibrated_parameters: ClassVar[tuple[str, ...]]

    def forward(self, x: Tensor, state: Any = None, write_mask: Tensor | None = None) -> tuple[Tensor, Any]:
        """Read and write every token (write_mask [B, S]: 1 store, 0 read only) -> (out [B, S, dim], new state)."""

    def read(self, x: Tensor, state: Any) -> Tensor:
        """Read only: out [B, S, dim] from `state`, which is left as it was."""

    def write(self, x: Tensor, state: Any) -> Any:
        """Write only, in stream order (the tokens the cache just evicted) -> the new state."""

    def init_state(self, batch: int, device=None) -> Any:
        """A fresh state for `batch` streams."""

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the state for `batch` streams: fixed."""


def _setting(default: Any, least: int | None = None) -> Any:
    """A settings field; `least`: the smallest valid value (the config refuses less)."""
    return field(default=default, metadata={} if least is None else {"min": least})


@dataclass(frozen=True)
class MemoryKind:
    name: str
    settings: type  # dataclass of the kind's keys, `memory.<name>.*`; each field's default is the user default
    build: Callable[..., "nn.Module"]  # (settings, dim=, heads=, chunk_size=) -> a `Memory` for one layer
    # old flat key (memory.<old>) -> its field in `settings`
    renamed: dict[str, str] = field(default_factory=dict)
    # field -> the value a recorded config without that field was built with (it was added later)
    built_before: dict[str, Any] = field(default_factory=dict)


# ---- FHRR (memory/fhrr.py) -----------------------------------------------------------------------------

@dataclass
class FHRRSettings:
    holo_dim: int = _setting(1024, least=1)  # phasors per key (capacity ~4x this many pairs at >= 90% top-1)


def _build_fhrr(s: FHRRSettings, dim: int, heads: int, chunk_size: int) -> "nn.Module":
    from symphony.memory.fhrr import FHRRConfig, FHRRMemory

    return FHRRMemory(FHRRConfig(dim=dim, heads=heads, holo_dim=s.holo_dim, chunk_size=chunk_size))


# ---- Titans (memory/titans.py) -------------------------------------------------------------------------

@dataclass
class TitansSettings:
    hidden: int = _setting(0, least=0)  # memory MLP hidden width; 0 -> 2 x head dim
    symplectic: bool = False  # research: forget gate attenuated by chunk complexity (off)
    pages: int = _setting(1, least=1)  # research: manifold paging, page groups per head (1 = off)
    page_threshold: float = 0.5  # complexity above which the active page switches
    read_norm: bool = True  # RMS-normalise the read-out per head (bounded on long streams)


def _build_titans(s: TitansSettings, dim: int, heads: int, chunk_size: int) -> "nn.Module":
    from symphony.memory.titans import TitansConfig, TitansMemory

    return TitansMemory(TitansConfig(dim=dim, heads=heads, hidden=s.hidden, chunk_size=chunk_size,
                                     use_symplectic_gating=s.symplectic, num_pages=s.pages,
                                     page_threshold=s.page_threshold, read_norm=s.read_norm))


# ---- the registry --------------------------------------------------------------------------------------

KINDS: dict[str, MemoryKind] = {k.name: k for k in (
    MemoryKind("fhrr", FHRRSettings, _build_fhrr, renamed={"holo_dim": "holo_dim"}),
    MemoryKind("titans", TitansSettings, _build_titans,
               renamed={"titans_hidden": "hidden", "titans_symplectic": "symplectic", "titans_pages": "pages",
                        "titans_page_threshold": "page_threshold", "titans_read_norm": "read_norm"},
               built_before={"read_norm": False}),  # checkpoints made before the bounded read-out existed
)}


def kind_names() -> tuple[str, ...]:
    """Every valid `memory.kind`: none, then the registered kinds."""
    return (NONE, *KINDS)


def get_kind(name: str) -> MemoryKind:
    if name not in KINDS:
        raise SymphonyError(f"config key 'memory.kind' must be one of {', '.join(kind_names())} to build a memory; "
                            f"got '{name}'")
    return KINDS[name]


def settings_of(mem_cfg, kind: MemoryKind):
    """`mem_cfg`'s section for `kind` (its defaults for a kind registered after the config class was made)."""
    section = getattr(mem_cfg, kind.name, None)
    return section if dataclasses.is_dataclass(section) else kind.settings()


def build_memory(mem_cfg, dim: int, model_heads: int) -> "nn.Module":
    """The memory module `mem_cfg` (a MemoryConfig) configures, for one layer of a model with hidden size `dim`
    and `model_heads` attention heads (the memory heads when `memory.heads` is 0)."""
    kind = get_kind(mem_cfg.kind)
    memory = kind.build(settings_of(mem_cfg, kind), dim=dim, heads=mem_cfg.heads or model_heads,
                        chunk_size=mem_cfg.chunk_size)
    if not isinstance(getattr(type(memory), "calibrated_parameters", None), tuple):
        raise TypeError(f"memory kind '{kind.name}': {type(memory).__name__} must declare `calibrated_parameters`, "
                        "a tuple of the parameter names phase 6 calibrates (() for none)")
    return memory


def calibrated_parameter_names(model: "nn.Module") -> set[str]:
    """Full names (as in `model.named_parameters()`) of what phase 6 calibrates: the parameters every module on
    the model declares in its class's `calibrated_parameters` (memory adapters: their gate; memories: their
    gates and decay; the copy head: its gate), each entry naming a parameter or a submodule."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(type(module), "calibrated_parameters", None)
        if not declared:
            continue
        for name, _ in module.named_parameters():
            if any(name == d or name.startswith(d + ".") for d in declared):
                out.add(f"{prefix}.{name}" if prefix else name)
    return out
