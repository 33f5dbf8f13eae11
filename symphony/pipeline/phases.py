"""The registry of the seven phases: the one place the CLI (`run-phase`, `pipeline`, their help), the
training code and the docs read a phase's number, name and what it does.

A phase runs as `get_phase(n)(cfg, run_dir, force=False, progress=True, **extra)` and returns its manifest.
Adding a phase: write its runner, add one `Phase` row here.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

from symphony.errors import SymphonyError


@dataclass(frozen=True)
class Phase:
    number: int
    name: str  # short, for the command line
    title: str  # what its manifest is called
    summary: str  # one line for `symphony run-phase --help`
    runner: str  # "module:function" taking (cfg, run_dir, force, progress, ...)
    trains: bool = False  # phases 4-7: run_training_phase(cfg, run_dir, phase=number, ...)


_TRAIN = "symphony.pipeline.train:run_training_phase"
PHASES: dict[int, Phase] = {p.number: p for p in (
    Phase(1, "freeze", "freeze", "load + freeze the base model, record calibration statistics",
          "symphony.pipeline.freeze:run_freeze"),
    Phase(2, "inject", "inject", "attach zero-gated memory adapters, verify equality with the base",
          "symphony.pipeline.inject:run_inject"),
    Phase(3, "dataset", "dataset", "long documents + synthetic long-range tasks",
          "symphony.pipeline.dataset:build_dataset"),
    Phase(4, "coarse", "coarse pre-training", "train FHRR/Titans memories through the bounded cache", _TRAIN, True),
    Phase(5, "HEP-DNA", "HEP-DNA", "train the salience router and copy head", _TRAIN, True),
    Phase(6, "calibrate", "long-range calibration", "curriculum over growing lengths; keep the best stage on dev",
          _TRAIN, True),
    Phase(7, "finetune", "hybrid sparse fine-tuning", "joint fine-tuning; export DIR/final", _TRAIN, True),
)}


def phase_title(n: int) -> str:
    return PHASES[n].title


def phase_table() -> str:
    """`N name  summary` lines, for help texts."""
    return "\n".join(f"{p.number} {p.name:<9} {p.summary}" for p in PHASES.values())


def get_phase(n: int) -> Callable[..., dict]:
    if n not in PHASES:
        raise SymphonyError(f"there is no phase {n}; phases are 1-{max(PHASES)}")
    phase = PHASES[n]
    module, _, name = phase.runner.partition(":")
    run = getattr(importlib.import_module(module), name)
    return functools.partial(run, phase=n) if phase.trains else run
