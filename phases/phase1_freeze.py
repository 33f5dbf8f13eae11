"""Phase 1 (freeze): load the base model, freeze every parameter, record calibration statistics."""
from symphony.freeze import run_freeze


def run(cfg, run_dir, force: bool = False, progress: bool = True) -> dict:
    return run_freeze(cfg, run_dir, force=force, progress=progress)
