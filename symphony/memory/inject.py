"""Inject memory adapters into a frozen HF causal LM; save and load their weights.

    adapters = inject(model, cfg.memory)        # base frozen, zero-gated adapters on the configured layers
    save_adapters(model, out_dir, manifest)     # out_dir/adapters.safetensors + out_dir/manifest.json
    load_adapters(model, out_dir)               # into a model injected with the same memory config

Checkpoint keys are the adapters' names inside the model (e.g. `model.layers.1.mlp.memory_adapter.gate`,
`symphony_pointer.copy_head.gate_scale`, `symphony_persistent.embeddings`), so a checkpoint made for other layers or
other sizes is refused with the missing / unexpected / mis-shaped keys named, never loaded partially.
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from symphony.config import MemoryConfig, parse_layer_spec
from symphony.errors import SymphonyError
from symphony.io import atomic_write_bytes, atomic_write_json, read_json
from symphony.memory.adapter import ATTR, MemoryAdapter
from symphony.memory.fhrr import FHRRConfig, FHRRMemory
from symphony.memory.persistent import PERSISTENT_ATTR, PersistentMemory, persistent_memory
from symphony.memory.pointer import CopyHead, SalienceRouter
from symphony.memory.titans import TitansConfig, TitansMemory

ADAPTERS_FILE = "adapters.safetensors"
MANIFEST_FILE = "manifest.json"
# memory keys added after checkpoints were made: a manifest without one was built as this says
BUILT_BEFORE_KEY_EXISTED = {"titans_read_norm": False}
POINTER_ATTR = "symphony_pointer"


class PointerHeads(nn.Module):
    """HEP-DNA's trainable parts, kept on the model as `symphony_pointer` so they save with the adapters."""

    def __init__(self, hidden_size: int, embed_size: int):
        super().__init__()
        self.router = SalienceRouter(hidden_size)
        self.copy_head = CopyHead(hidden_size, embed_size)  # gate_scale starts at exactly 0


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


def has_memory(model: nn.Module) -> bool:
    return bool(memory_adapters(model)) or pointer_heads(model) is not None or persistent_memory(model) is not None


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

def build_memory(mem_cfg: MemoryConfig, dim: int, model_heads: int) -> nn.Module:
    heads = mem_cfg.heads or model_heads
    if mem_cfg.kind == "fhrr":
        return FHRRMemory(FHRRConfig(dim=dim, heads=heads, holo_dim=mem_cfg.holo_dim, chunk_size=mem_cfg.chunk_size))
    if mem_cfg.kind == "titans":
        return TitansMemory(TitansConfig(dim=dim, heads=heads, hidden=mem_cfg.titans_hidden,
                                         chunk_size=mem_cfg.chunk_size,
                                         use_symplectic_gating=mem_cfg.titans_symplectic,
                                         num_pages=mem_cfg.titans_pages,
                                         page_threshold=mem_cfg.titans_page_threshold,
                                         read_norm=mem_cfg.titans_read_norm))
    raise SymphonyError(f"config key 'memory.kind' must be fhrr or titans to build a memory; got '{mem_cfg.kind}'")


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
    persistent memory as `model.symphony_persistent` when `mem_cfg.persistent_tokens > 0`).

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
        if mem_cfg.kind != "none":
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
    if persistent_memory(model) is not None:
        delattr(model, PERSISTENT_ATTR)


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (MemoryAdapter, PointerHeads, PersistentMemory))]


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


# ---- checkpoints -------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_adapters(model: nn.Module, out_dir: str | Path, manifest: dict | None = None) -> dict:
    """Write `out_dir/adapters.safetensors`, then `out_dir/manifest.json` (`manifest` plus an `adapters`
    entry: file, sha256, tensor and parameter counts), each atomically; the manifest goes last, so its
    presence means the pair is complete. Returns the manifest written."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in adapter_state_dict(model).items()}
    path = atomic_write_bytes(out_dir / ADAPTERS_FILE, save(tensors, metadata={"format": "pt"}))
    manifest = dict(manifest or {})
    manifest["adapters"] = {
        "file": ADAPTERS_FILE,
        "sha256": _sha256(path),
        "bytes": path.stat().st_size,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _rebuild_hint(out_dir: Path, force: bool = True) -> str:
    """The command that rewrites an adapter directory of a run (phaseN/, or final/ from phase 7)."""
    from symphony.pipeline.runs import phase_command

    m = re.fullmatch(r"phase(\d)", out_dir.name)
    phase = int(m.group(1)) if m else 7 if out_dir.name == "final" else None
    if phase is not None:
        return phase_command(out_dir.parent, phase, force=force)
    return "re-run the phase that wrote it with --force (symphony run-phase N --run-dir DIR -c PRESET --force)"


def _listing(keys: list[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _read_checkpoint(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = out_dir / ADAPTERS_FILE
    if not path.is_file():
        raise SymphonyError(f"no adapter checkpoint at {path}; build it: {_rebuild_hint(out_dir, force=False)}")
    manifest = None
    mpath = out_dir / MANIFEST_FILE
    if mpath.is_file():
        try:
            manifest = read_json(mpath)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SymphonyError(f"{mpath} is corrupt (not valid JSON); rebuild it: "
                                f"{_rebuild_hint(out_dir)}") from None
        expected = (manifest.get("adapters") or {}).get("sha256")
        if expected and _sha256(path) != expected:
            raise SymphonyError(f"{path} is corrupt (its sha256 does not match {mpath}); rebuild it: "
                                f"{_rebuild_hint(out_dir)}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise SymphonyError(f"{path} is corrupt or not a safetensors file ({reason}); rebuild it: "
                            f"{_rebuild_hint(out_dir)}") from None
    return tensors, manifest


def load_adapters(model: nn.Module, out_dir: str | Path) -> dict | None:
    """Load `out_dir/adapters.safetensors` into a model injected with the same memory config.

    Refuses (SymphonyError, one line) a checkpoint whose keys or shapes differ from the model's adapters;
    nothing is loaded then. Returns the checkpoint's manifest (None when it has none)."""
    out_dir = Path(out_dir)
    tensors, manifest = _read_checkpoint(out_dir)
    own = adapter_state_dict(model)
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k} {list(tensors[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {_listing(shapes, 2)}")
        made_with = ""
        made_cfg = ((manifest or {}).get("config") or {}).get("memory")
        if isinstance(made_cfg, dict):
            made_with = "; it was made with " + " ".join(f"memory.{k}={v}" for k, v in made_cfg.items())
        raise SymphonyError(
            f"adapter checkpoint {out_dir / ADAPTERS_FILE} does not match this model's memory adapters ("
            + "; ".join(parts)
            + f"){made_with}; use the same --set memory.* options, or rebuild: {_rebuild_hint(out_dir)}"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(tensors[k].to(dtype=t.dtype))
    return manifest


# ---- trained checkpoints for inference ---------------------------------------------------------------

CHECKPOINT_DIRS = ("final",) + tuple(f"phase{n}" for n in range(7, 1, -1))  # newest training output first


def _stale(run: Path, sub: str) -> str | None:
    """Why `run/sub` (final/ or the newest phaseN/) no longer holds what the run's phases make now, e.g. after an
    earlier phase was redone with --force and the later ones were not; None when it does. Each trained phase
    records the sha256 of the adapters it started from (runs made before it did are not checked)."""
    from symphony.pipeline.runs import phase_command, symphony_command

    def manifest(name: str) -> dict | None:
        try:
            m = read_json(run / name / MANIFEST_FILE)
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def sha(m: dict | None) -> str | None:
        return ((m or {}).get("adapters") or {}).get("sha256")

    last = 7 if sub == "final" else int(sub.removeprefix("phase"))
    if sub == "final":
        phase7, final = manifest("phase7"), manifest("final")
        if phase7 is not None and final is not None and sha(phase7) != sha(final):
            return (f"{run / 'final'} does not hold {run / 'phase7'}'s adapters (phase 7 was redone after final/ was "
                    f"exported); export it again: {phase_command(run, 7, force=True)}, or pass {run / 'phase7'}")
    for n in range(last, 3, -1):
        prev = n - 1 if n > 4 else 2
        made_from, now = (manifest(f"phase{n}") or {}).get("from_sha256"), sha(manifest(f"phase{prev}"))
        if made_from and now and made_from != now:
            redo = symphony_command(["pipeline", "--from", str(n), *(["--to", str(last)] if last != 7 else [])],
                                    run, force=True)
            return (f"{run / sub} is stale: {run / f'phase{prev}'} was redone after phase {n} was trained from it; "
                    f"redo phases {n}-{last}: {redo}, or pass {run / f'phase{prev}'} to use the redone phase")
    return None


def find_checkpoint(path: str | Path) -> Path:
    """The adapter directory behind `path`: itself, or a run directory's final/ or newest phaseN/, refused when
    a phase it was made from has been redone since (an adapter directory named directly is taken as is)."""
    p = Path(path).expanduser()
    if (p / ADAPTERS_FILE).is_file():
        return p
    for sub in CHECKPOINT_DIRS:
        if (p / sub / ADAPTERS_FILE).is_file():
            stale = _stale(p, sub)
            if stale:
                raise SymphonyError(stale)
            return p / sub
    if not p.exists():
        raise SymphonyError(f"checkpoint {p} does not exist; pass a phase run's directory (made by "
                            "symphony run-phase 2 --run-dir DIR, or symphony pipeline)")
    raise SymphonyError(f"no {ADAPTERS_FILE} in {p}, nor in its {', '.join(CHECKPOINT_DIRS[:3])}, ... subdirectories; "
                        "make one: symphony run-phase 2 --run-dir DIR")


def load_checkpoint(model: nn.Module, path: str | Path, model_name: str | None = None) -> dict:
    """Inject the adapters a checkpoint was trained with (its manifest's memory config) and load its weights.

    Refuses, in one line, a checkpoint made for another model or whose weights don't match."""
    from dataclasses import fields

    d = find_checkpoint(path)
    mpath = d / MANIFEST_FILE
    try:
        manifest = read_json(mpath)
    except FileNotFoundError:
        raise SymphonyError(f"{mpath} is missing (it records how the adapters were built); rebuild: "
                            f"{_rebuild_hint(d)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SymphonyError(f"{mpath} is corrupt (not valid JSON); rebuild it: {_rebuild_hint(d)}") from None
    config = manifest.get("config") or {}
    mem = config.get("memory")
    if not isinstance(mem, dict):
        raise SymphonyError(f"{mpath} does not record the memory config its adapters were built with; rebuild: "
                            f"{_rebuild_hint(d)}")
    made_for = (config.get("model") or {}).get("name")
    if model_name and made_for and made_for != model_name:
        raise SymphonyError(f"checkpoint {d} was trained on model '{made_for}', not '{model_name}'; "
                            f"use a config with model.name={made_for}")
    names = {f.name for f in fields(MemoryConfig)}
    mem = {**BUILT_BEFORE_KEY_EXISTED, **mem}
    mem_cfg = MemoryConfig(**{k: v for k, v in mem.items() if k in names and k != "checkpoint"})
    inject(model, mem_cfg, seed=int(config.get("seed", 0)))
    try:
        load_adapters(model, d)
    except SymphonyError:
        remove_adapters(model)  # nothing half-loaded stays on the model
        raise
    return manifest
