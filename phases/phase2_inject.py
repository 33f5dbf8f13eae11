"""Phase 2 (inject): attach zero-gated memory adapters to the frozen model; verify its logits are unchanged."""
from symphony.inject_phase import run_inject


def run(cfg, run_dir, force: bool = False, progress: bool = True) -> dict:
    return run_inject(cfg, run_dir, force=force, progress=progress)
