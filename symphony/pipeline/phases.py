"""The registry of the seven phases: the one place the CLI (`run-phase`, `pipeline`, their help), the
training code and the docs read a phase's number, name and what it does.

A phase runs as `get_phase(n)(cfg, run_dir, force=False, progress=True, **extra)` and returns its manifest.
Adding a phase: write its runner (deciding up-to-date / refused / redo with `runs.PhaseRun`; a
`summary_lines(result)` beside it says what `run-phase` prints), add one `Phase` row here. A training phase needs no runner of its own: its row's `TrainingSpec` says what
`train.run_training_phase` does, and its step count is the config key `train.phase<N>_steps`.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from symphony.errors import SymphonyError


@dataclass(frozen=True)
class TrainingSpec:
    """What a training phase trains, on which samples, starting from which phase's adapters."""
    trains: Literal["adapters", "pointer", "calibrated", "everything"]  # see train._trainable
    samples: Literal["lm", "tasks", "all"]  # lm: the long documents; tasks: the synthetic tasks
    starts_from: int  # the phase whose adapters it loads
    copy: bool = False  # the copy head's loss joins in (when the run has one)
    router: bool = False  # the salience router learns the keep-exactly labels (when the run has one)
    retriever: bool = False  # the HEP-DNA retriever trains on the tasks' facts and questions (when the run has one)
    curriculum: bool = False  # stages over train.curriculum lengths; the best stage on dev is kept
    exports_final: bool = False  # also writes DIR/final
    idle: str = "no adapters"  # why there is nothing to train when none of its parameters exist


@dataclass(frozen=True)
class Phase:
    number: int
    name: str  # short, for the command line
    title: str  # what its manifest is called
    summary: str  # one line for `symphony run-phase --help`
    runner: str  # "module:function" taking (cfg, run_dir, force, progress, ...)
    training: TrainingSpec | None = None  # a training phase: run_training_phase(cfg, run_dir, phase=number, ...)

    @property
    def trains(self) -> bool:
        return self.training is not None


_TRAIN = "symphony.pipeline.train:run_training_phase"
PHASES: dict[int, Phase] = {p.number: p for p in (
    Phase(1, "freeze", "freeze", "load + freeze the base model, record calibration statistics",
          "symphony.pipeline.freeze:run_freeze"),
    Phase(2, "inject", "inject", "attach zero-gated memory adapters, verify equality with the base",
          "symphony.pipeline.inject:run_inject"),
    Phase(3, "dataset", "dataset", "long documents + synthetic long-range tasks",
          "symphony.pipeline.dataset:build_dataset"),
    Phase(4, "coarse", "coarse pre-training", "train FHRR/Titans memories through the bounded cache", _TRAIN,
          training=TrainingSpec("adapters", "lm", starts_from=2, idle="memory.kind is none")),
    Phase(5, "HEP-DNA", "HEP-DNA", "train the salience router, copy head and retriever", _TRAIN,
          training=TrainingSpec("pointer", "tasks", starts_from=4, copy=True, router=True, retriever=True,
                                idle="memory.pointer is off and memory.retriever_dim is 0")),
    Phase(6, "calibrate", "long-range calibration", "curriculum over growing lengths; keep the best stage on dev",
          _TRAIN, training=TrainingSpec("calibrated", "all", starts_from=5, copy=True, curriculum=True)),
    Phase(7, "finetune", "hybrid sparse fine-tuning", "joint fine-tuning; export DIR/final", _TRAIN,
          training=TrainingSpec("everything", "all", starts_from=6, copy=True, router=True, exports_final=True)),
)}


def phase_title(n: int) -> str:
    return PHASES[n].title


def phase_table() -> str:
    """`N name  summary` lines, for help texts."""
    return "\n".join(f"{p.number} {p.name:<9} {p.summary}" for p in PHASES.values())


def training_spec(n: int) -> TrainingSpec:
    spec = PHASES[n].training if n in PHASES else None
    if spec is None:
        raise SymphonyError(f"phase {n} is not a training phase; training phases are "
                            f"{', '.join(str(p.number) for p in PHASES.values() if p.trains)}")
    return spec


def get_phase(n: int) -> Callable[..., dict]:
    if n not in PHASES:
        raise SymphonyError(f"there is no phase {n}; phases are 1-{max(PHASES)}")
    phase = PHASES[n]
    module, _, name = phase.runner.partition(":")
    run = getattr(importlib.import_module(module), name)
    return functools.partial(run, phase=n) if phase.trains else run


def phase_summary(n: int, result: dict) -> list[str]:
    """What `run-phase` prints under phase n's status line: its runner module's `summary_lines(result)`."""
    module = importlib.import_module(PHASES[n].runner.partition(":")[0])
    summarize = getattr(module, "summary_lines", None)
    return summarize(result) if summarize is not None else []
