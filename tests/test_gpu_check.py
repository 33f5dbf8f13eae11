"""benchmarks/gpu_check.sh --dry-run: the GPU check's script runs end to end on the CPU (tiny model)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--decode-tokens", "4"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(r["method"], r["context_len"]): r for r in data["rows"]}
    assert set(rows) == {(m, n) for m in ("symphony", "sinks", "full") for n in (1024, 2048)}
    assert all(r["status"] == "ok" for r in rows.values())
    for m in ("symphony", "sinks"):  # bounded: the same cache at both lengths; full grows
        assert rows[(m, 1024)]["cache_bytes"] == rows[(m, 2048)]["cache_bytes"]
    assert rows[("full", 2048)]["cache_bytes"] > rows[("full", 1024)]["cache_bytes"]
