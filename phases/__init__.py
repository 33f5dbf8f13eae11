"""The seven phase entry points (`symphony run-phase N`). Each is thin: the logic lives in `symphony/`."""
from __future__ import annotations

import importlib

from symphony.errors import SymphonyError

# number -> (name, module with a `run(cfg, run_dir, force)` function, or None while not built)
PHASES: dict[int, tuple[str, str | None]] = {
    1: ("freeze", "phases.phase1_freeze"),
    2: ("inject", "phases.phase2_inject"),
    3: ("dataset", "phases.phase3_dataset"),
    4: ("coarse pre-training", "phases.phase4_coarse"),
    5: ("HEP-DNA", "phases.phase5_pointer"),
    6: ("long-range calibration", "phases.phase6_calibrate"),
    7: ("hybrid sparse fine-tuning", "phases.phase7_finetune"),
}


def get_phase(n: int):
    if n not in PHASES:
        raise SymphonyError(f"there is no phase {n}; phases are 1-7")
    name, module = PHASES[n]
    if module is None:
        raise SymphonyError(f"phase {n} ({name}) is not built yet; phases available now: "
                            + ", ".join(str(k) for k, (_, m) in PHASES.items() if m))
    return importlib.import_module(module).run
