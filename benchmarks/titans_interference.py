"""Interference benchmark for the Titans memory's research extensions (symplectic gating, manifold paging).

Protocol (per seed, per variant; each variant starts from the same baseline weights):
  1. outer-train a TitansMemory (projections, gates, W_0, and the extensions' parameters) with Adam on task A;
  2. then on task B; measure the task-A recall loss before and after step 2 (forgetting = after − before).

A task is associative recall. An episode writes `--pairs` (key, value) tokens x = R_T [key; value] (key and value
each dim/2 Gaussian, R_T a fixed random rotation of task T; R_A = I), then asks `--queries` stored keys with
x = R_T [key; 0] (write weight 0); the target is R_T [0; value]. Loss: ‖out − target‖² / ‖value‖² per query,
averaged (1.0 = answering 0). Tasks A and B differ only by R_T, so one set of projections cannot serve both:
training on B interferes with A. The memory state is fresh per episode (as in the seed's benchmark).
Also measured: "A after distractors" — the post-A model recalls the first `--pairs` A pairs after
`--distract` more chunks of A pairs were written (in-context interference, where paging's routing acts), the
step-time overhead vs the baseline (forward+backward+Adam, median over steps), and page switches.

Threshold sweep: the trained gating+paging model (after A) is run on A episodes with page_threshold set to each
swept value: page switches per episode (summed over heads) and per chunk, and the A loss at that threshold.
(The model was trained at --threshold; the sweep changes only the switch rule at evaluation.)

    python benchmarks/titans_interference.py                      # ~7 min on 1 CPU thread (3 seeds)
    python benchmarks/titans_interference.py --steps 100 --seeds 1   # quick look
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symphony.memory import TitansConfig, TitansMemory  # noqa: E402
from symphony.memory.titans import page_switches  # noqa: E402


def rotation(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]


def episode(rot: torch.Tensor, batch: int, pairs: int, queries: int, g: torch.Generator, distract: int = 0):
    """x [B, S, dim], write mask [B, S], query positions (the last `queries` tokens), targets [B, queries, dim]."""
    dim = rot.shape[0]
    half = dim // 2
    key = torch.randn(batch, pairs + distract, half, generator=g)
    val = torch.randn(batch, pairs + distract, half, generator=g)
    ask = torch.randint(0, pairs, (batch, queries), generator=g)  # only the first `pairs` are asked
    pick = lambda t: torch.gather(t, 1, ask[..., None].expand(-1, -1, half))  # noqa: E731
    qk, qv = pick(key), pick(val)
    zeros = torch.zeros(batch, queries, half)
    x = torch.cat([torch.cat([key, val], -1), torch.cat([qk, zeros], -1)], 1) @ rot.T
    target = torch.cat([zeros, qv], -1) @ rot.T
    mask = torch.cat([torch.ones(batch, pairs + distract), torch.zeros(batch, queries)], 1)
    return x, mask, target, qv


def recall_loss(mem: TitansMemory, rot, batch, pairs, queries, g, distract=0):
    x, mask, target, qv = episode(rot, batch, pairs, queries, g, distract)
    out, state = mem(x, write_mask=mask)
    err = (out[:, -queries:] - target).pow(2).sum(-1) / qv.pow(2).sum(-1)
    return err.mean(), state


def build(args, variant: str, seed: int) -> TitansMemory:
    kw = {}
    if variant in ("gating", "gating+paging"):
        kw["use_symplectic_gating"] = True
    if variant in ("paging", "gating+paging"):
        kw.update(num_pages=args.pages, page_threshold=args.threshold)
    torch.manual_seed(seed)  # the extensions' parameters are created last: same baseline weights per seed
    return TitansMemory(TitansConfig(dim=args.dim, heads=args.heads, hidden=args.hidden, chunk_size=args.chunk,
                                     **kw))


def evaluate(mem, rot, args, seed, distract=0) -> tuple[float, float]:
    """Mean recall loss and page switches per episode (summed over heads) on --eval-batches fixed episodes."""
    g = torch.Generator().manual_seed(10_000 + seed)
    losses, switches = [], []
    with torch.no_grad():
        for _ in range(args.eval_batches):
            loss, state = recall_loss(mem, rot, args.batch, args.pairs, args.queries, g, distract)
            losses.append(loss.item())
            switches.append(page_switches(state).sum(1).float().mean().item())
    return statistics.mean(losses), statistics.mean(switches)


def train(mem, opt, rot, args, g) -> tuple[list[float], list[float]]:
    times, switches = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss, state = recall_loss(mem, rot, args.batch, args.pairs, args.queries, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        switches.append(page_switches(state).sum(1).float().mean().item())
    return times, switches


def run_variant(args, variant: str, seed: int, rots) -> dict:
    mem = build(args, variant, seed)
    opt = torch.optim.Adam(mem.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    ta, sa = train(mem, opt, rots["A"], args, g)
    a_before, _ = evaluate(mem, rots["A"], args, seed)
    a_distract, _ = evaluate(mem, rots["A"], args, seed, distract=args.distract * args.chunk)
    after_a = copy.deepcopy(mem)
    tb, sb = train(mem, opt, rots["B"], args, g)
    a_after, _ = evaluate(mem, rots["A"], args, seed)
    b_after, _ = evaluate(mem, rots["B"], args, seed)
    sweep = []
    if variant == "gating+paging":
        for thr in args.sweep:
            after_a.cfg.page_threshold = thr
            loss, sw = evaluate(after_a, rots["A"], args, seed)
            sweep.append(dict(threshold=thr, switches_per_episode=sw, a_loss=loss))
    skip = min(5, args.steps // 4)  # warm-up steps are not timed
    chunks = (args.pairs + args.queries) // args.chunk
    return dict(variant=variant, seed=seed, a_before=a_before, a_after=a_after, forgetting=a_after - a_before,
                b_after=b_after, a_after_distractors=a_distract,
                step_ms=1000 * statistics.median(ta[skip:] + tb[skip:]),
                switches_per_step_A=statistics.mean(sa), switches_per_step_B=statistics.mean(sb),
                switch_rate_per_chunk=statistics.mean(sa + sb) / (chunks * args.heads), sweep=sweep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=0, help="memory MLP width; 0 -> 2 x head dim")
    ap.add_argument("--chunk", type=int, default=8, help="tokens per surprise step")
    ap.add_argument("--pairs", type=int, default=24, help="written (key, value) pairs per episode")
    ap.add_argument("--queries", type=int, default=8, help="queries per episode (a multiple of --chunk)")
    ap.add_argument("--distract", type=int, default=4, help="chunks of extra A pairs for the distractor eval")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps per task")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.2, help="page threshold of the paging variants")
    ap.add_argument("--sweep", default="0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,0.9", help="thresholds to sweep")
    ap.add_argument("--variants", default="baseline,gating,paging,gating+paging")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/titans_interference.json")
    args = ap.parse_args(argv)
    args.sweep = [float(t) for t in args.sweep.split(",") if t.strip()]
    if args.pairs % args.chunk or args.queries % args.chunk or args.dim % 2:
        ap.error("--pairs and --queries must be multiples of --chunk, --dim even")
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rots = {"A": torch.eye(args.dim), "B": rotation(args.dim, 1234)}

    rows = []
    for seed in range(args.seeds):
        for variant in variants:
            t0 = time.perf_counter()
            rows.append(run_variant(args, variant, seed, rots))
            r = rows[-1]
            print(f"seed {seed} {variant:14s} A {r['a_before']:.3f} -> {r['a_after']:.3f} after B,"
                  f" B {r['b_after']:.3f},"
                  f" A+distract {r['a_after_distractors']:.3f}, {r['step_ms']:.1f} ms/step,"
                  f" switches/step {r['switches_per_step_A']:.2f}/{r['switches_per_step_B']:.2f}"
                  f" ({time.perf_counter() - t0:.0f}s)", flush=True)

    def agg(variant, key):
        vals = [r[key] for r in rows if r["variant"] == variant]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    base_ms = agg("baseline", "step_ms")[0] if "baseline" in variants else float("nan")
    summary = []
    for v in variants:
        s = {k: agg(v, k) for k in ("a_before", "a_after", "forgetting", "b_after", "a_after_distractors", "step_ms",
                                    "switches_per_step_A", "switches_per_step_B", "switch_rate_per_chunk")}
        s["variant"], s["overhead"] = v, s["step_ms"][0] / base_ms
        summary.append(s)
    print(f"\n{args.seeds} seeds, mean ± sd; loss = normalised recall MSE (1.0 = answering 0); pages {args.pages}, "
          f"threshold {args.threshold}\n")
    print("| variant | A loss before B | A loss after B | forgetting | B loss | A loss, +distractors | ms/step | "
          "overhead | switches/step (A / B) |")
    print("|---|---|---|---|---|---|---|---|---|")
    pm = lambda m: f"{m[0]:.3f} ± {m[1]:.3f}"  # noqa: E731
    for s in summary:
        print(f"| {s['variant']} | {pm(s['a_before'])} | {pm(s['a_after'])} | {pm(s['forgetting'])} | "
              f"{pm(s['b_after'])} | {pm(s['a_after_distractors'])} | {s['step_ms'][0]:.1f} | {s['overhead']:.2f}x | "
              f"{s['switches_per_step_A'][0]:.2f} / {s['switches_per_step_B'][0]:.2f} |")
    sweep_rows = [r for r in rows if r["sweep"]]
    if sweep_rows:
        chunks = (args.pairs + args.queries) // args.chunk
        print(f"\nThreshold sweep (gating+paging model after A; {chunks} chunks x {args.heads} heads per episode)\n")
        print("| threshold | switches/episode | switches/chunk/head | A loss |")
        print("|---|---|---|---|")
        sweep = []
        for i, thr in enumerate(args.sweep):
            sw = statistics.mean(r["sweep"][i]["switches_per_episode"] for r in sweep_rows)
            loss = statistics.mean(r["sweep"][i]["a_loss"] for r in sweep_rows)
            sweep.append(dict(threshold=thr, switches_per_episode=sw, a_loss=loss))
            print(f"| {thr:.2f} | {sw:.2f} | {sw / (chunks * args.heads):.3f} | {loss:.3f} |")
    else:
        sweep = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(vars(args), torch=torch.__version__, python=platform.python_version(), machine=platform.machine())
    out.write_text(json.dumps(dict(meta=meta, rows=rows, summary=summary, sweep=sweep), indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
