"""A training phase's loss curve (DIR/phaseN/loss.png) from its metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from symphony.io import save_plot


def plot_losses(metrics_path: Path, out: Path, title: str) -> Path | None:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["nll"] for r in rows], marker=".", label="answer / LM NLL (nats per target)")
    if any(r.get("router_bce") is not None for r in rows):
        ax.plot(steps, [r.get("router_bce") or 0.0 for r in rows], marker=".", label="router BCE")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_plot(fig, out, dpi=110)
