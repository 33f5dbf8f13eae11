"""Speed, honestly: ingest tokens/s and decode ms/token of every method on the same input, several repeats,
each in a fresh worker process (the `symphony eval oom` worker), medians, spreads and ratios.

    .venv/bin/python benchmarks/speed.py                          # smollm2-135m, 8k and 32k, 3 repeats
    .venv/bin/python benchmarks/speed.py -c tiny --lengths 1k --repeats 2 --out /tmp/speed   # a smoke run

Run it on an idle machine, one process at a time (it refuses to start when the 1-minute load average says
something else is running): figures taken while other jobs share the cores are not figures. Methods run
interleaved (full, sinks, symphony, full, ...) so a slow drift hits all of them alike. `full` is skipped past
`--full-max` (its time is quadratic). Writes OUT/speed.json and prints the table with the ratios
Symphony / StreamingLLM (same slot budget) and Symphony / full.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from symphony.config import load_config
from symphony.evaluation.methods import parse_lengths
from symphony.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def run_worker(cfg, method: str, length: int, decode_tokens: int) -> dict:
    spec = json.dumps({"config": cfg.to_dict(), "method": method, "length": length, "decode_tokens": decode_tokens})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, "-m", "symphony.evaluation.oom_worker", spec], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"worker failed ({method}, {length}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "-c", default="smollm2-135m")
    ap.add_argument("--lengths", default="8k,32k")
    ap.add_argument("--methods", default="full,sinks,symphony")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--full-max", default="8k", help="longest length for `full`")
    ap.add_argument("--out", default=str(ROOT / "results" / "speed"))
    ap.add_argument("--max-load", type=float, default=0.5, help="refuse to start above this 1-minute load average")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    if load > args.max_load:
        raise SystemExit(f"speed: the machine is busy (1-minute load {load:.2f} > {args.max_load}); run it idle")
    cfg = load_config(args.config)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    full_max = parse_lengths(args.full_max)[0]
    raw: dict[tuple[str, int], list[dict]] = {}
    for n in parse_lengths(args.lengths):
        for rep in range(args.repeats):
            for m in methods:
                if m == "full" and n > full_max:
                    continue
                r = run_worker(cfg, m, n, args.decode_tokens)
                raw.setdefault((m, n), []).append(r)
                print(f"{m:>9} {n:>7,} #{rep + 1}: ingest {r['ingest_tok_s']:,.0f} tok/s, "
                      f"decode {r['decode_ms_per_tok']:.1f} ms/tok", flush=True)
    rows = []
    for (m, n), rs in raw.items():
        rows.append({"method": m, "context_len": n, "ingest_tok_s": summary([r["ingest_tok_s"] for r in rs]),
                     "decode_ms_per_tok": summary([r["decode_ms_per_tok"] for r in rs]),
                     "cache_bytes": rs[0].get("cache_bytes")})
    med = {(r["method"], r["context_len"]): r for r in rows}
    ratios = []
    for n in parse_lengths(args.lengths):
        for base in ("sinks", "full"):
            a, b = med.get(("symphony", n)), med.get((base, n))
            if a and b:
                ratios.append({"context_len": n, "vs": base,
                               "ingest": a["ingest_tok_s"]["median"] / b["ingest_tok_s"]["median"],
                               "decode": a["decode_ms_per_tok"]["median"] / b["decode_ms_per_tok"]["median"]})
    print("\n| method | context | ingest tok/s (median, min-max) | decode ms/tok (median, min-max) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        i, d = r["ingest_tok_s"], r["decode_ms_per_tok"]
        print(f"| {r['method']} | {r['context_len']:,} | {i['median']:,.0f} ({i['min']:,.0f}-{i['max']:,.0f}) | "
              f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f}) |")
    for q in ratios:
        print(f"symphony / {q['vs']} at {q['context_len']:,}: ingest x{q['ingest']:.2f}, decode time x{q['decode']:.2f}")
    out = Path(args.out)
    atomic_write_json(out / "speed.json", {
        "suite": "speed", "date": time.strftime("%Y-%m-%d"), "config": cfg.to_dict(), "repeats": args.repeats,
        "load_before": load, "cpu_count": os.cpu_count(), "rows": rows, "ratios": ratios})
    print(f"-> {out / 'speed.json'}")


if __name__ == "__main__":
    main()
