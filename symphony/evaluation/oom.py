"""OOM stress: peak memory and speed against context length, for every method.

Each measurement runs in a fresh worker process (`symphony.evaluation.oom_worker`), so one length's
allocations never inflate the next one's peak and an out-of-memory kill costs one cell, not the run.
Before a cell runs, two honest checks:

* memory: `limits.projected_bytes` (base = the measured peak of the method's smallest finished run minus
  its cache; before any run, weights x 1.5 + 300 MB). Over the limit -> `over_limit`, not attempted.
* time (`--time-limit`): the previous length's ingest time for the method, scaled quadratically for an
  unbounded method (`full`) and linearly for the bounded ones. Over the limit -> `skipped_time`, with the
  projected seconds.

Rows: method, context_len, peak_mem_bytes, cache_bytes, ingest_tok_s, decode_ms_per_tok, status
(ok | over_limit | skipped_time | failed), plus projected_bytes / projected_s / error where relevant, and
for measured cells stream_peak_bytes (the peak after loading: ingest + decode), ingest_s, tokens_seen,
cache_slots. Peaks include the weights; see `oom_worker` for how they are taken.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from symphony.errors import SymphonyError
from symphony.io import save_plot
from symphony.report import fmt_bytes
from symphony.runtime.policies import POLICIES

MB = 1 << 20
FIELDS = ("method", "context_len", "peak_mem_bytes", "cache_bytes", "ingest_tok_s", "decode_ms_per_tok", "status")
DECIDED = ("over_limit", "skipped_time")  # decisions, not measurements: re-decided on --resume
BASE_OVERHEAD = 300 * MB  # runtime + allocator on top of the weights, before anything is measured
# The config sections a measurement depends on: a resumed run must share them.
_CONFIG_KEYS = ("seed", "model", "cache", "salience")


@dataclass
class ModelFacts:
    """What the projections need, from the model's config alone (the parent never loads the weights)."""

    config: Any
    device: torch.device
    dtype: torch.dtype  # compute dtype
    kv_per_token: int
    weight_bytes: int

    @property
    def shim(self):
        """Stands in for the model in `limits.projected_bytes` (reads `.config` and `.dtype`)."""
        return SimpleNamespace(config=self.config, dtype=self.dtype)


def model_facts(cfg) -> ModelFacts:
    from symphony.models.info import kv_bytes_per_token
    from symphony.models.loading import load_config_only, resolve_device, resolve_dtype, resolve_source
    from symphony.planner import embedding_params, weight_bytes
    from symphony.report import count_parameters_from_config

    config = load_config_only(resolve_source(cfg.model.name), cfg.model.trust_remote_code)
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    quant = cfg.model.quantization
    compute = torch.bfloat16 if quant != "none" and dtype == torch.float32 else dtype
    weights = weight_bytes(count_parameters_from_config(config), embedding_params(config), dtype.itemsize, quant)
    return ModelFacts(config, device, compute, kv_bytes_per_token(config, compute.itemsize), weights)


# -- projections -------------------------------------------------------------------------------------

def _ok_rows(rows: list[dict], method: str) -> list[dict]:
    return sorted((r for r in rows if r["method"] == method and r.get("status") == "ok"
                   and r.get("peak_mem_bytes") is not None), key=lambda r: r["context_len"])


def base_bytes(rows: list[dict], method: str, facts: ModelFacts) -> int:
    """Memory the method's process holds besides its cache: measured once one run has finished."""
    ok = _ok_rows(rows, method)
    if ok:
        return max(0, int(ok[0]["peak_mem_bytes"]) - int(ok[0].get("cache_bytes") or 0))
    return int(facts.weight_bytes * 1.5 + BASE_OVERHEAD)


def project_bytes(cfg, facts: ModelFacts, rows: list[dict], method: str, length: int) -> int:
    from symphony.evaluation.limits import projected_bytes

    c = cfg.cache
    return projected_bytes(facts.shim, length, POLICIES[method].capacity(c), c.segment_len, facts.kv_per_token,
                           base_bytes(rows, method, facts))


def project_seconds(rows: list[dict], method: str, length: int, decode_tokens: int) -> float | None:
    """Ingest + decode seconds at `length`, from the largest shorter finished run of the method
    (quadratic in length for an unbounded method, linear for the bounded ones); None before any run."""
    prev = [r for r in _ok_rows(rows, method) if r["context_len"] < length and r.get("ingest_tok_s")]
    if not prev:
        return None
    r = prev[-1]
    scale = length / r["context_len"]
    bounded = POLICIES[method].bounded
    ingest_s = r["context_len"] / r["ingest_tok_s"] * (scale if bounded else scale ** 2)
    decode_s = (r.get("decode_ms_per_tok") or 0.0) / 1000 * decode_tokens * (1.0 if bounded else scale)
    return ingest_s + decode_s


# -- the worker ----------------------------------------------------------------------------------

def worker_command() -> list[str]:
    return [sys.executable, "-m", "symphony.evaluation.oom_worker"]


def worker_env() -> dict[str, str]:
    """The parent's environment (OMP_NUM_THREADS, HF_HUB_OFFLINE, ... pass through) plus an mmap
    threshold low enough that freed large blocks go back to the OS instead of padding the peak RSS."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_worker(spec: dict) -> dict:
    """Run one measurement in a fresh process. Returns the worker's JSON result, or
    {"status": "failed", "error": ...} when it died (out-of-memory kill, exception, ...)."""
    proc = subprocess.run(worker_command(), input=json.dumps(spec), capture_output=True, text=True,
                          env=worker_env())
    for line in reversed((proc.stdout or "").splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and "status" in result:
            if proc.returncode == 0:
                return result
            break
    err = _last_line(proc.stderr)
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        killed = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        err = f"{killed}: {err}" if err else killed
    elif not err:
        err = f"exit status {proc.returncode}, no result line"
    return {"status": "failed", "error": err[:500]}


# -- the sweep -----------------------------------------------------------------------------------

def _row(method: str, length: int, status: str, **fields: Any) -> dict:
    row = {k: None for k in FIELDS}
    row.update(method=method, context_len=int(length), status=status)
    row.update({k: v for k, v in fields.items() if v is not None or k in FIELDS})
    return row


def _check_resumable(store, cfg) -> None:
    old_cfg, new_cfg = store.previous.get("config") or {}, cfg.to_dict()
    diff = [k for k in _CONFIG_KEYS if k in old_cfg and old_cfg[k] != new_cfg[k]]
    if diff:
        raise SymphonyError(f"{store.path} was measured with a different config ({', '.join(diff)} differ: model "
                            f"{old_cfg.get('model', {}).get('name')!r}); resume it with the same config or"
                            " choose another --out")


def run_oom(cfg, lengths: list[int], methods: list[str], out: Path, resume: bool = False,
            memory_limit: str | None = None, decode_tokens: int = 16, time_limit: float | None = None,
            progress: bool = True, echo: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every (length, method) cell, ascending lengths; results go to out/oom.json after every
    cell and the plot to out/oom.png. Returns the rows."""
    from symphony.evaluation.limits import resolve_memory_limit
    from symphony.evaluation.results import ResultStore
    from symphony.evaluation.shards import single_process_only

    single_process_only("oom", "measures peak memory and speed, which processes sharing a machine would skew")
    out = Path(out)
    lengths = sorted(set(int(n) for n in lengths))
    facts = model_facts(cfg)
    limit = resolve_memory_limit(memory_limit, facts.device) if memory_limit or facts.device.type != "cuda" \
        else default_cuda_limit(facts.device)
    path = out / "oom.json"
    meta = {"model": cfg.model.name, "config": cfg.to_dict(), "memory_limit": limit, "device": str(facts.device),
            "decode_tokens": decode_tokens, "time_limit": time_limit, "kv_bytes_per_token": facts.kv_per_token}
    store = ResultStore(path, key_fields=("method", "context_len"), meta=meta, resume=resume,
                        sections=("config",))
    _check_resumable(store, cfg)
    cells = [(n, m) for n in lengths for m in methods]
    bar = tqdm(cells, desc="oom", unit="cell", disable=not progress, dynamic_ncols=True)
    for length, method in bar:
        bar.set_postfix_str(f"{method} @ {length:,}")
        old = next((r for r in store.rows if store.key(r) == (method, length)), None)
        if old is not None:
            if old.get("status") not in DECIDED:
                continue  # measured (ok or failed): kept as it is
            store.rows = [r for r in store.rows if r is not old]  # a decision: made again below
        projected = project_bytes(cfg, facts, store.rows, method, length)
        if projected > limit:
            store.add(_row(method, length, "over_limit", projected_bytes=projected))
            continue
        seconds = project_seconds(store.rows, method, length, decode_tokens) if time_limit else None
        if seconds is not None and seconds > time_limit:
            store.add(_row(method, length, "skipped_time", projected_s=round(seconds, 1), projected_bytes=projected))
            continue
        spec = {"config": cfg.to_dict(), "method": method, "length": length, "decode_tokens": decode_tokens}
        result = run_worker(spec)
        status = result.pop("status", "failed")
        if status != "ok":
            store.add(_row(method, length, "failed", projected_bytes=projected, error=result.get("error")))
            (echo or (lambda line: tqdm.write(line, file=sys.stderr)))(
                f"{method} @ {length:,}: worker failed: {result.get('error')}")
            continue
        store.add(_row(method, length, "ok", **{k: result.get(k) for k in
                                                ("peak_mem_bytes", "cache_bytes", "ingest_tok_s", "decode_ms_per_tok",
                                                 "stream_peak_bytes", "ingest_s", "tokens_seen", "cache_slots")}))
    bar.close()
    store.save()
    plot_oom(store.rows, out / "oom.png", limit, title=f"{cfg.model.name} on {facts.device.type}")
    return store.rows


def default_cuda_limit(device: torch.device) -> int:
    """80% of free GPU memory, asked of a short-lived process: a CUDA context in this (parent) process
    would hold GPU memory the workers then could not use."""
    code = ("import torch; free, _ = torch.cuda.mem_get_info(torch.device(%r)); print(int(0.8 * free))" % str(device))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=worker_env())
    try:
        return int(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SymphonyError(f"cannot read free GPU memory ({_last_line(proc.stderr) or 'no output'});"
                            " pass --memory-limit") from None


# -- output --------------------------------------------------------------------------------------

def _len_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else (f"{n / 1024:.1f}k" if n >= 1024 else str(n))


def render_table(rows: list[dict]) -> list[str]:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'method':<9} {'length':>7} {'peak':>10} {'cache':>10} {'tok/s':>9} {'ms/tok':>8}  status"]
    for r in sorted(rows, key=lambda r: (r["method"], r["context_len"])):
        status = r["status"]
        if status == "over_limit" and r.get("projected_bytes") is not None:
            status += f" (needs ~{fmt_bytes(r['projected_bytes'])})"
        elif status == "skipped_time" and r.get("projected_s") is not None:
            status += f" (~{r['projected_s']:,.0f} s)"
        elif status == "failed" and r.get("error"):
            status += f": {r['error'][:60]}"
        peak = "-" if r.get("peak_mem_bytes") is None else fmt_bytes(r["peak_mem_bytes"])
        cache = "-" if r.get("cache_bytes") is None else fmt_bytes(r["cache_bytes"])
        lines.append(f"{r['method']:<9} {_len_label(r['context_len']):>7} {peak:>10} {cache:>10}"
                     f" {num(r.get('ingest_tok_s'), ',.1f'):>9} {num(r.get('decode_ms_per_tok'), '.1f'):>8}  {status}")
    return lines


def plot_oom(rows: list[dict], path: str | Path, memory_limit: int | None = None, title: str | None = None) -> Path:
    """Two panels against context length (log2): peak memory (MB) and ingest tokens/s, one line per method.
    Cells not measured are an x at their projected value (memory for over_limit, speed for skipped_time);
    failed cells an open square. The memory limit is the dashed line."""
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 4.6))
    FigureCanvasAgg(fig)
    ax_mem, ax_speed = fig.subplots(1, 2)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    mem_values: list[float] = []
    for i, m in enumerate(methods):
        policy = POLICIES.get(m)  # saved rows may name a policy this process has not registered
        color = (policy and policy.color) or f"C{i}"
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["context_len"])
        ok = [r for r in mine if r["status"] == "ok"]
        xs = [r["context_len"] for r in ok]
        mem = [r["peak_mem_bytes"] / MB for r in ok]
        mem_values += mem
        ax_mem.plot(xs, mem, "o-", color=color, label=m)
        speed = [(r["context_len"], r["ingest_tok_s"]) for r in ok if r.get("ingest_tok_s")]
        if speed:
            ax_speed.plot(*zip(*speed), "o-", color=color, label=m)
        for r in mine:
            if r["status"] == "ok":
                continue
            x = r["context_len"]
            marker = {"failed": "s"}.get(r["status"], "x")
            kw: dict[str, Any] = dict(marker=marker, s=70, zorder=3)
            if marker == "s":
                kw.update(facecolors="none", edgecolors=color)
            else:
                kw.update(color=color)
            if r.get("projected_bytes") is not None:
                mem_values.append(r["projected_bytes"] / MB)
                ax_mem.scatter([x], [r["projected_bytes"] / MB], **kw)
            if r["status"] == "skipped_time" and r.get("projected_s"):
                ax_speed.scatter([x], [x / r["projected_s"]], **kw)
    lengths = sorted({r["context_len"] for r in rows})
    for ax in (ax_mem, ax_speed):
        ax.set_xscale("log", base=2)
        if lengths:
            ax.set_xticks(lengths)
            ax.set_xticklabels([_len_label(n) for n in lengths])
            ax.minorticks_off()
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, alpha=0.3)
    ax_mem.set_ylabel("peak memory (MB)")
    ax_mem.set_title("peak memory vs context length")
    ax_speed.set_ylabel("ingest tokens / s")
    ax_speed.set_title("ingest speed vs context length")
    ax_speed.set_yscale("log")
    ax_speed.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_speed.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_speed.yaxis.set_minor_formatter(ticker.NullFormatter())
    top = max(mem_values, default=1.0)
    limit_off_plot = False
    if memory_limit:
        if memory_limit / MB <= 3 * top:
            ax_mem.axhline(memory_limit / MB, ls="--", color="gray", label=f"memory limit ({fmt_bytes(memory_limit)})")
        else:  # far above the data: a line up there would flatten every curve
            limit_off_plot = True
            ax_mem.text(0.98, 0.03, f"memory limit {fmt_bytes(memory_limit)} (above the plot)",
                        transform=ax_mem.transAxes, ha="right", va="bottom", fontsize=8, color="gray")
    ax_mem.set_ylim(0, max(ax_mem.get_ylim()[1], top * 1.15))
    handles = ax_mem.get_legend_handles_labels()[0]
    handles += [Line2D([], [], ls="", marker="x", color="black", label="projected (not run)"),
                Line2D([], [], ls="", marker="s", mfc="none", color="black", label="failed")]
    ax_mem.legend(handles=handles, fontsize=8, loc="center left" if limit_off_plot else "best")
    if ax_speed.get_legend_handles_labels()[0]:
        ax_speed.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_plot(fig, path, dpi=110)
