"""Write+read throughput and state size of the FHRR and Titans memories, streamed in segments.

Each memory sees one stream of random hidden states [1, segment, dim], state carried across calls,
and is measured at checkpoints (default 4k, 64k tokens; add 1M with --tokens): cumulative tokens/s,
state bytes, and whether any output or state value is NaN/inf. Prints a table, writes JSON.

    python benchmarks/memory_throughput.py                         # 4k and 64k, CPU, 1 thread
    python benchmarks/memory_throughput.py --tokens 4096,65536,1048576 --memories titans
    python benchmarks/memory_throughput.py --preset small --tokens 4096,65536,1048576   # quick 1M NaN check
    python benchmarks/memory_throughput.py --device cuda --tokens 4096,65536,1048576
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symphony.memory import (FHRRConfig, FHRRMemory, TitansConfig, TitansMemory, state_nbytes,  # noqa: E402
                             state_tensors)

# realistic: small-model dims (SmolLM2-135M: hidden 576, 9 heads of 64); small: a quick 1M-token stability run
PRESETS = {
    "realistic": {
        "fhrr-512": lambda: FHRRMemory(FHRRConfig(dim=576, heads=9, holo_dim=512, chunk_size=64)),
        "fhrr-1024": lambda: FHRRMemory(FHRRConfig(dim=576, heads=9, holo_dim=1024, chunk_size=64)),
        "titans": lambda: TitansMemory(TitansConfig(dim=576, heads=1, hidden=1152, chunk_size=64)),
    },
    "small": {
        "fhrr-512": lambda: FHRRMemory(FHRRConfig(dim=64, heads=2, holo_dim=512, chunk_size=64)),
        "fhrr-1024": lambda: FHRRMemory(FHRRConfig(dim=64, heads=2, holo_dim=1024, chunk_size=64)),
        "titans": lambda: TitansMemory(TitansConfig(dim=64, heads=1, hidden=128, chunk_size=64)),
    },
}
MEMORIES = list(PRESETS["realistic"])


def finite_state(state) -> bool:
    return all(bool(torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all()) for t in state_tensors(state))


def bench(name: str, checkpoints: list[int], segment: int, device: str, dtype: torch.dtype,
          preset: str = "realistic") -> list[dict]:
    torch.manual_seed(0)
    mem = PRESETS[preset][name]().to(device=device, dtype=dtype).eval()
    params = sum(p.numel() for p in mem.parameters())
    pool = [torch.randn(1, segment, mem.cfg.dim, device=device, dtype=dtype) for _ in range(8)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows, state, seen, finite, i = [], None, 0, True, 0
    with torch.inference_mode():
        mem(pool[0][:, :64])  # warm-up (allocator, kernels), not counted
        sync()
        start = time.perf_counter()
        for target in checkpoints:
            while seen < target:
                n = min(segment, target - seen)
                out, state = mem(pool[i % len(pool)][:, :n], state)
                finite &= bool(torch.isfinite(out).all())
                seen, i = seen + n, i + 1
            sync()
            elapsed = time.perf_counter() - start
            ok = finite and finite_state(state)
            rows.append(dict(memory=name, preset=preset, dim=mem.cfg.dim, tokens=seen, seconds=round(elapsed, 3),
                             tokens_per_s=round(seen / elapsed, 1), state_bytes=state_nbytes(state), finite=ok,
                             params=params))
            nbytes = rows[-1]["state_bytes"]
            print(f"  {name:10s} {seen:>9,d} tokens  {seen / elapsed:>10,.0f} tok/s  state {nbytes:>12,d} B"
                  f"  {'ok' if ok else 'NaN/inf!'}  ({elapsed:.1f}s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="4096,65536", help="comma-separated checkpoints (e.g. 4096,65536,1048576)")
    ap.add_argument("--max-tokens", type=int, default=0, help="drop checkpoints above this (0: keep all)")
    ap.add_argument("--memories", default=",".join(MEMORIES), help=f"subset of {', '.join(MEMORIES)}")
    ap.add_argument("--segment", type=int, default=512, help="tokens per call")
    ap.add_argument("--preset", default="realistic", choices=list(PRESETS), help="module dims (small: stability runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable numbers on shared hosts)")
    ap.add_argument("--out", default="results/memory_throughput.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    checkpoints = sorted({int(t) for t in args.tokens.split(",") if t.strip()})
    if args.max_tokens:
        checkpoints = [t for t in checkpoints if t <= args.max_tokens]
    names = [m.strip() for m in args.memories.split(",") if m.strip()]
    unknown = [m for m in names if m not in MEMORIES]
    if unknown or not checkpoints:
        ap.error(f"unknown memories {unknown} (choose from {list(MEMORIES)})" if unknown else "no checkpoints left")

    print(f"preset {args.preset}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"segment {args.segment}")
    rows = []
    for name in names:
        rows += bench(name, checkpoints, args.segment, args.device, getattr(torch, args.dtype), args.preset)

    print(f"\n{'memory':10s} {'tokens':>10s} {'tok/s':>10s} {'state bytes':>13s} finite")
    for r in rows:
        print(f"{r['memory']:10s} {r['tokens']:>10,d} {r['tokens_per_s']:>10,.0f} {r['state_bytes']:>13,d} "
              f"{r['finite']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(preset=args.preset, device=args.device, dtype=args.dtype, threads=torch.get_num_threads(),
                segment=args.segment,
                torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
