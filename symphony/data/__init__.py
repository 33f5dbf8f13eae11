"""Phase 3's training data: long documents plus synthetic long-range tasks, saved as `datasets` Arrow."""
from symphony.data.build import COLUMNS, SPLITS, build_dataset, load_split

__all__ = ["COLUMNS", "SPLITS", "build_dataset", "load_split"]
