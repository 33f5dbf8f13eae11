"""Phase 5: see symphony.training.phases (what it trains, on which samples) and symphony.training.loop."""
from symphony.training.phases import run_training_phase


def run(cfg, run_dir, force: bool = False, progress: bool = True, on_step=None) -> dict:
    return run_training_phase(cfg, run_dir, 5, force=force, progress=progress, on_step=on_step)
