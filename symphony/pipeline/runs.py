"""Run directories: one folder per phase, each with an atomically written manifest; the commands that
(re)make a phase, spelled so that they run as printed; `PhaseRun`, the one rule for whether a phase is up to
date, refused, or redone."""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from symphony.errors import SymphonyError
from symphony.io import atomic_replace_dir, atomic_write_json, read_json
from symphony.pipeline.phases import PHASES


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


# ---- recovery commands -------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set_value(value: Any) -> str:
    """`value` as `--set key=VALUE` must spell it to be read back as the same value."""
    import yaml

    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(text) == value
        except yaml.YAMLError:
            plain = False
        if not plain:
            text = json.dumps(value)  # quoted: YAML reads it back as this string
    return text


def run_config(run_dir: str | Path, phase: int | None = None) -> dict | None:
    """The config a run was made with: the one `phase`'s manifest records, else the newest readable
    manifest's (later phases were run with every setting the earlier ones needed); None when none does."""
    for n in ([phase] if phase else []) + sorted(PHASES, reverse=True):
        try:
            config = read_json(manifest_path(run_dir, n)).get("config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, dict):
            return config
    return None


def config_args(config) -> list[str]:
    """`-c PRESET --set KEY=VALUE ...` that rebuild `config` (a SymphonyConfig or its dict): the preset it
    names (the default preset when that is not a preset name, e.g. a YAML file's stem) plus every key
    that differs from it. Nothing for a dict that is not a whole config (it names no preset)."""
    from symphony.config import load_config, preset_names

    from symphony.config import recorded_memory_config

    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    preset = d.get("preset")
    if not isinstance(preset, str):
        return []
    if isinstance(d.get("memory"), dict):  # a manifest from an older version may hold the memory's old flat keys
        memory = recorded_memory_config(d["memory"])
        memory.checkpoint = d["memory"].get("checkpoint", "")  # a record drops it; a config asks to load it
        d["memory"] = asdict(memory)
    base = load_config(preset if preset in preset_names() else None)
    mine, theirs = _flatten(d), _flatten(base.to_dict())
    args = ["-c", base.preset]
    for key, value in mine.items():
        if key != "preset" and key in theirs and theirs[key] != value:
            args += ["--set", f"{key}={_set_value(value)}"]
    return args


def symphony_command(args: list[str], run_dir: str | Path, config=None, force: bool = False,
                     phase: int | None = None) -> str:
    """`symphony ARGS --run-dir DIR -c PRESET --set ... [--force]`, shell-quoted. `config` (a SymphonyConfig
    or its dict) defaults to the one the run was made with (`phase`'s, when given); without either the config
    flags are left out."""
    if config is None:
        config = run_config(run_dir, phase)
    parts = ["symphony", *args, "--run-dir", str(Path(run_dir).expanduser())]
    if config is not None:
        try:
            parts += config_args(config)
        except SymphonyError:  # the presets moved or changed: the run dir still makes the hint useful
            pass
    if force:
        parts.append("--force")
    return shlex.join(parts)


def phase_command(run_dir: str | Path, phase: int, config=None, force: bool = False) -> str:
    """The command that (re)makes phase `phase` of this run, as it must be typed."""
    return symphony_command(["run-phase", str(phase)], run_dir, config, force, phase)


def made_otherwise(run_dir: str | Path, phase: int, what: str, config=None) -> SymphonyError:
    """The refusal to overwrite a phase made with other settings: `what` they were, and both ways out."""
    return SymphonyError(f"{manifest_path(run_dir, phase)} was made with {what}; use another --run-dir, or redo "
                         f"phase {phase} here: {phase_command(run_dir, phase, config, force=True)}")


# ---- manifests ---------------------------------------------------------------------------------------

def read_manifest(run_dir: str | Path, phase: int, needed_by: int | None = None, config=None) -> dict:
    """Read a phase's manifest; when another phase needs it, say which command makes it (with `config`,
    the caller's config, or else the run's)."""
    path = manifest_path(run_dir, phase)
    if not path.is_file():
        if needed_by is not None:
            raise SymphonyError(
                f"phase {needed_by} needs phase {phase}'s output, which is missing ({path}); "
                f"run first: {phase_command(run_dir, phase, config)}"
            )
        raise SymphonyError(f"no manifest at {path}")
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SymphonyError(f"{path} is corrupt (not valid JSON); re-run: "
                            f"{phase_command(run_dir, phase, config, force=True)}") from None


def make_manifest(phase: int, body: dict) -> dict:
    """A phase manifest: phase number, creation time, library versions, then the phase's own fields."""
    return {"phase": phase, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), **body}


def write_manifest(run_dir: str | Path, phase: int, body: dict, into: Path | None = None) -> Path:
    """DIR/phaseN/manifest.json, or `into`/manifest.json (a phase directory being staged)."""
    target = into / "manifest.json" if into is not None else manifest_path(run_dir, phase)
    return atomic_write_json(target, make_manifest(phase, body))


@contextlib.contextmanager
def staged_dir(dst: str | Path) -> Iterator[Path]:
    """An empty directory beside `dst` to build its new contents in; when the block completes it replaces
    `dst` and all `dst` held. On any error (or an interruption) `dst` is left as it was and the staged
    directory removed: a redone phase keeps its previous manifest and artifacts until the new ones are whole."""
    dst = Path(dst).expanduser()
    stage = dst.with_name(f".{dst.name}.new")
    shutil.rmtree(stage, ignore_errors=True)  # left by an interrupted earlier attempt
    stage.mkdir(parents=True)
    try:
        yield stage
        atomic_replace_dir(stage, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---- one phase in one run dir ------------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseRun:
    """Phase `number` of the run in `run_dir`, as this call would make it (`fingerprint`). Every phase runner
    asks it first whether there is anything to do (`up_to_date`), builds its new contents aside (`stage`)
    and returns `result()`, so that skipping, refusing and redoing mean the same in every phase."""

    run_dir: Path
    number: int
    fingerprint: str
    made_with: str  # what other settings are called when refused, e.g. "a different data/model config"
    config: Any = None  # this call's config (or dict): the refusal's hint rebuilds it
    files: tuple[str, ...] = ()  # what a complete phase holds beside its manifest
    dirs: tuple[str, ...] = ()
    recorded: dict = field(default_factory=dict)  # further manifest fields that must match, where recorded

    @property
    def dir(self) -> Path:
        return phase_dir(self.run_dir, self.number)

    def complete(self) -> bool:
        return all((self.dir / f).is_file() for f in self.files) and all((self.dir / d).is_dir() for d in self.dirs)

    def up_to_date(self, force: bool = False, resumable: Callable[[], bool] | None = None) -> dict | None:
        """The phase's manifest (status "up-to-date") when it was made with this fingerprint and is complete:
        the runner returns it and does nothing. None when the phase is to be built: there is none, it is
        incomplete, or `force`. A phase made with other settings is refused with the command that redoes it
        (never overwritten without --force), unless `resumable()` says an interrupted redo with these
        settings left a resume point."""
        if force or not manifest_path(self.run_dir, self.number).is_file():
            return None
        old = read_manifest(self.run_dir, self.number, config=self.config)
        same = old.get("fingerprint") == self.fingerprint and all(
            old.get(key, value) == value for key, value in self.recorded.items())
        if same and self.complete():
            return {**old, "status": "up-to-date"}
        if not same and not (resumable and resumable()):
            raise made_otherwise(self.run_dir, self.number, self.made_with, self.config)
        return None

    def stage(self) -> contextlib.AbstractContextManager[Path]:
        """The directory to build the phase in; it replaces DIR/phaseN only when the block completes, so a
        failed or interrupted redo keeps the previous phase whole."""
        return staged_dir(self.dir)

    def result(self, status: str = "written") -> dict:
        return {**read_manifest(self.run_dir, self.number), "status": status}
