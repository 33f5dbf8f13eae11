"""Phase 3 (dataset): long documents from the corpus plus synthetic long-range tasks, train and dev splits."""
from symphony.data import build_dataset


def run(cfg, run_dir, force: bool = False, progress: bool = True) -> dict:
    return build_dataset(cfg, run_dir, force=force, progress=progress)
