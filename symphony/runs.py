"""Run directories: one folder per phase, each with an atomically written manifest."""
from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from symphony.errors import SymphonyError
from symphony.io import atomic_write_json, read_json


def versions() -> dict[str, str]:
    import torch
    import transformers

    import symphony

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "symphony": symphony.__version__,
    }


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def phase_dir(run_dir: str | Path, phase: int) -> Path:
    return Path(run_dir).expanduser() / f"phase{phase}"


def manifest_path(run_dir: str | Path, phase: int) -> Path:
    return phase_dir(run_dir, phase) / "manifest.json"


def read_manifest(run_dir: str | Path, phase: int, needed_by: int | None = None) -> dict:
    """Read a phase's manifest; when another phase needs it, say which command makes it."""
    path = manifest_path(run_dir, phase)
    if not path.is_file():
        if needed_by is not None:
            raise SymphonyError(
                f"phase {needed_by} needs phase {phase}'s output, which is missing ({path}); "
                f"run first: symphony run-phase {phase} --run-dir {run_dir}"
            )
        raise SymphonyError(f"no manifest at {path}")
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SymphonyError(f"{path} is corrupt (not valid JSON); re-run: symphony run-phase {phase} --force") from None


def make_manifest(phase: int, body: dict) -> dict:
    """A phase manifest: phase number, creation time, library versions, then the phase's own fields."""
    return {"phase": phase, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), **body}


def write_manifest(run_dir: str | Path, phase: int, body: dict) -> Path:
    return atomic_write_json(manifest_path(run_dir, phase), make_manifest(phase, body))
