"""Memory adapter checkpoints: save and load their weights, find a run's trained ones, load them for inference.

    save_adapters(model, out_dir, manifest)     # out_dir/adapters.safetensors + out_dir/manifest.json
    load_adapters(model, out_dir)               # into a model injected with the same memory config
    load_checkpoint(model, run_or_dir)          # inject what the manifest records, then load the weights

Checkpoint keys are the adapters' names inside the model (e.g. `model.layers.1.mlp.memory_adapter.gate`,
`symphony_pointer.copy_head.gate_scale`, `symphony_persistent.embeddings`), so a checkpoint made for other layers or
other sizes is refused with the missing / unexpected / mis-shaped keys named, never loaded partially. A
manifest records the memory config the adapters were built with, in whatever key names its version used
(`symphony.config.recorded_memory_config` reads them all).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from symphony.config import recorded_memory_config
from symphony.errors import SymphonyError
from symphony.io import atomic_write_bytes, atomic_write_json, read_json
from symphony.memory.inject import adapter_state_dict, inject, remove_adapters

ADAPTERS_FILE = "adapters.safetensors"
MANIFEST_FILE = "manifest.json"


# ---- checkpoints -------------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
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
        "sha256": file_sha256(path),
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


def _flat(d: dict, prefix: str = "") -> dict:
    """{"titans": {"pages": 2}} -> {"titans.pages": 2}: a recorded config as --set keys."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


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
        if expected and file_sha256(path) != expected:
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
            made_with = "; it was made with " + " ".join(f"memory.{k}={v}" for k, v in _flat(made_cfg).items())
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
    inject(model, recorded_memory_config(mem), seed=int(config.get("seed", 0)))
    try:
        load_adapters(model, d)
    except SymphonyError:
        remove_adapters(model)  # nothing half-loaded stays on the model
        raise
    return manifest


# ---- the HEP-DNA retriever on its own -------------------------------------------------------------------

RETRIEVER_FORMAT = "symphony-retriever/1"
PACKAGED_RETRIEVERS = Path(__file__).resolve().parent.parent / "retrievers"  # one file per model, trained by us


def packaged_retriever(model_name: str) -> Path | None:
    """The retriever trained for `model_name` that ships with the package (None: none for this model)."""
    f = PACKAGED_RETRIEVERS / f"{model_name}.safetensors"
    return f if f.is_file() else None


def save_retriever(model: nn.Module, path: str | Path, model_name: str, trained_by: str = "") -> Path:
    """Write the model's retriever alone (its weights, and in the file's metadata what it was built for)."""
    from safetensors.torch import save

    from symphony.memory.inject import retriever_of

    r = retriever_of(model)
    if r is None:
        raise SymphonyError("this model has no HEP-DNA retriever to save (memory.retriever_dim is 0)")
    meta = {"format": RETRIEVER_FORMAT, "model": model_name, "hidden_size": str(r.proj.in_features),
            "dim": str(r.dim), "layer": str(r.layer), "trained_by": trained_by}
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in r.state_dict().items()}
    return atomic_write_bytes(Path(path), save(tensors, metadata=meta))


def load_retriever(model: nn.Module, path: str | Path, model_name: str | None = None) -> None:
    """Attach the retriever saved in `path` (safetensors: weights only, nothing executes), replacing any the model
    has; refused in one line when it was made for another model or another width."""
    from safetensors import SafetensorError, safe_open

    from symphony.memory.inject import RETRIEVER_ATTR, _branch_placement, _text_config
    from symphony.memory.retriever import SpanRetriever

    p = Path(path).expanduser()
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise SymphonyError(f"cannot read the retriever {p} ({e}); pass a file written by symphony's"
                            " save_retriever, or set memory.retriever=off") from None
    if meta.get("format") != RETRIEVER_FORMAT:
        raise SymphonyError(f"{p} is not a {RETRIEVER_FORMAT} file; pass one written by save_retriever")
    hidden = getattr(_text_config(model), "hidden_size", None) if hasattr(model, "config") else None
    if model_name and meta.get("model") not in (None, "", model_name):
        raise SymphonyError(f"the retriever {p} was trained for model '{meta['model']}', not '{model_name}';"
                            " set memory.retriever=off or pass one trained for this model")
    try:
        r = SpanRetriever(int(meta["hidden_size"]), int(meta["dim"]), int(meta["layer"]))
    except (KeyError, ValueError):
        raise SymphonyError(f"{p} does not record the retriever's hidden_size, dim and layer") from None
    if hidden is not None and r.proj.in_features != hidden:
        raise SymphonyError(f"the retriever {p} reads {r.proj.in_features}-wide hidden states; this model's are"
                            f" {hidden} wide")
    missing, unexpected = r.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise SymphonyError(f"the retriever {p} does not fit (missing {_listing(missing)}; unexpected"
                            f" {_listing(unexpected)})")
    device, _ = _branch_placement(model)
    setattr(model, RETRIEVER_ATTR, r.to(device=device))


def use_retriever(model: nn.Module, choice: str, model_name: str) -> None:
    """`memory.retriever`: 'auto' keeps a checkpoint's retriever, else attaches the one shipped for the model (if
    any); 'off' removes any (the ablation); anything else is a file to load."""
    from symphony.memory.inject import RETRIEVER_ATTR, retriever_of

    if choice == "off":
        if retriever_of(model) is not None:
            delattr(model, RETRIEVER_ATTR)
    elif choice == "auto":
        shipped = packaged_retriever(model_name)
        if retriever_of(model) is None and shipped is not None:
            load_retriever(model, shipped, model_name)
    else:
        load_retriever(model, choice, model_name)
