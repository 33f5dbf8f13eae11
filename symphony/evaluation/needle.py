"""Needle-in-a-haystack grid: context length x needle depth x trials, every method on the same inputs.

Each cell (length, depth, trial) gets its own needle drawn from a generator seeded by the cell, so every
method answers exactly the same question about exactly the same haystack, and a resumed run rebuilds the
same inputs. Rows are saved the moment a trial finishes; a resumed run skips the cells it has.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
import time
from pathlib import Path
from typing import Any, Callable

import click
import psutil
import torch
from tqdm.auto import tqdm

from symphony.errors import SymphonyError
from symphony.evaluation.limits import default_memory_limit, parse_memory_limit, projected_bytes
from symphony.evaluation.results import ResultStore
from symphony.evaluation.shards import (ShardedResults, join_world, process_config, processes_on_device,
                                        quiet_unless_main)
from symphony.io import save_plot
from symphony.haystack import _KEYS, Needle, build_haystack, contains_answer, random_needle

DEFAULT_LENGTHS = "1k,2k,4k,8k,16k,32k"
DEFAULT_DEPTHS = ",".join(str(d) for d in range(0, 101, 10))
NEEDLE_KINDS = ("number", "word", "uuid")
MAX_DISTRACTORS = len(_KEYS) - 1
NOT_RUN = ("over_limit", "oom")  # statuses of cells that were not (or could not be) measured


# -- inputs ------------------------------------------------------------------------------------------
def parse_depths(text: str) -> list[int | float]:
    """'0,25,50' (percent) -> [0, 25, 50]; whole numbers stay ints so JSON keys read naturally."""
    out: list[int | float] = []
    for part in text.split(","):
        part = part.strip().rstrip("%")
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SymphonyError(f"cannot read depth '{part}'; use percentages, e.g. 0,25,50,75,100") from None
        if not 0 <= value <= 100:
            raise SymphonyError(f"depth {part} is outside 0..100 (percent of the haystack)")
        out.append(int(value) if value.is_integer() else value)
    if not out:
        raise SymphonyError("no depths given; use percentages, e.g. 0,25,50,75,100")
    return list(dict.fromkeys(out))


def cell_rng(seed: int, context_len: int, depth: int | float, trial: int) -> random.Random:
    """A generator for one cell: the same (seed, cell) always draws the same needle, whatever ran before."""
    return random.Random(f"needle:{seed}:{context_len}:{depth}:{trial}")


def make_needles(rng: random.Random, kind: str = "number", distractors: int = 0) -> list[Needle]:
    """The target needle first, then `distractors` needles of the same kind with other keys (and values)."""
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise SymphonyError(f"--distractors must be between 0 and {MAX_DISTRACTORS}; got {distractors}")
    target = random_needle(rng, kind)
    keys = [k for k in _KEYS if k != target.key]
    rng.shuffle(keys)
    needles = [target]
    values = {target.value}
    for key in keys[:distractors]:
        for _ in range(64):  # distinct values where the kind allows it; never the target's value
            n = random_needle(rng, kind, key=key)
            if n.value not in values:
                break
        while n.value == target.value:
            n = random_needle(rng, kind, key=key)
        values.add(n.value)
        needles.append(n)
    return needles


class _CorpusTokenizer:
    """The tokenizer, except that the haystack corpus is tokenised once per run instead of once per
    cell (build_haystack tokenises the whole corpus each call)."""

    def __init__(self, tokenizer, corpus: str):
        self._tok = tokenizer
        self._corpus = corpus
        self._encoded = tokenizer(corpus, add_special_tokens=False)

    def __call__(self, text, *args, **kwargs):
        if text is self._corpus:
            return self._encoded
        return self._tok(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def deal_order(grid: list[tuple], methods: list[str]) -> list[tuple]:
    """The (method, length, depth, trial) cells in the order they are dealt to a sharded run's processes:
    the methods rotate one step from each (length, depth, trial) to the next. Dealt in plain order, N
    processes and N methods would give each process one method, and methods differ in cost by orders of
    magnitude (full vs a bounded cache at long lengths), so one process would do nearly all the work."""
    k = len(methods)
    return [(methods[(i + j) % k], *cell) for i, cell in enumerate(grid) for j in range(k)]


def cell_input(tokenizer, corpus: str, context_len: int, depth: int | float, trial: int, seed: int,
               kind: str, distractors: int) -> tuple[list[Needle], list[int]]:
    """The needles and the haystack token ids of one cell (identical for every method)."""
    rng = cell_rng(seed, context_len, depth, trial)
    needles = make_needles(rng, kind, distractors)
    offset = rng.randrange(10_000)
    try:
        ids = build_haystack(tokenizer, corpus, context_len, depth / 100, needles, offset=offset)
    except ValueError as e:
        raise SymphonyError(f"length {context_len}: {e}") from None
    return needles, ids


# -- running -----------------------------------------------------------------------------------------
def held_bytes(device: torch.device) -> int:
    """Memory this process holds already: CUDA allocated bytes on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


def memory_budget(text: str | None, device: torch.device, sharing: int = 1) -> tuple[int, int]:
    """(limit on the process's total, bytes held now). An explicit --memory-limit is the total;
    the default (80% of what is free) is headroom on top of what is held already, split evenly between the
    `sharing` processes of a sharded run that draw on the same memory (one RAM, or one GPU)."""
    base = held_bytes(device)
    limit = parse_memory_limit(text) if text else default_memory_limit(device) // max(sharing, 1) + base
    return limit, base


def retriever_setting(cfg) -> dict[str, str]:
    """The retriever file recall uses beside a checkpoint's own (memory.retriever): none recorded when there is
    none, so runs from before the retriever still resume."""
    from symphony.memory.checkpoint import file_sha256, packaged_retriever

    choice = cfg.memory.retriever
    f = None if choice == "off" else packaged_retriever(cfg.model.name) if choice == "auto" else Path(choice)
    return {"retriever": f"{f.name} sha256:{file_sha256(f)[:16]}"} if f is not None else {}


def run_settings(cfg, seed: int, haystack: str | None, corpus: str, max_new_tokens: Any, **suite: Any) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (see _settings_guard); `suite`: the suite's own."""
    return {
        "model": cfg.model.name, "dtype": cfg.model.dtype, "seed": seed, **suite,
        "haystack": haystack or "builtin", "haystack_chars": len(corpus),
        "max_new_tokens": max_new_tokens, "salience": dict(vars(cfg.salience)),
        **({"checkpoint": cfg.memory.checkpoint} if cfg.memory.checkpoint else {}),  # trained adapters used
        **retriever_setting(cfg),
        **({} if cfg.memory.copy_head else {"copy_head": False}),  # ablation: trained copy head not mixed in
        # the method is per row, so the configured default policy does not matter
        "cache": {k: v for k, v in vars(cfg.cache).items() if k != "policy"},
    }


def load_engines(cfg, methods: list[str], memory_limit: str | None, world) -> tuple[Any, dict[str, Any], int, int]:
    """(the configured engine, {method: engine over the same model}, memory limit, bytes held now)."""
    from symphony.runtime.engine import StreamingEngine, engine_from_config

    base_engine = engine_from_config(cfg, progress=False)
    model, tok = base_engine.model, base_engine.tokenizer
    engines = {m: StreamingEngine(model, tok, cfg.cache, cfg.salience, policy=m) for m in methods}
    limit, base = memory_budget(memory_limit, base_engine.device, processes_on_device(base_engine.device, world))
    return base_engine, engines, limit, base


@dataclass
class EvalRun:
    """What a suite's run starts from: its haystack text, engines, memory budget and the model's figures."""

    corpus: str
    engine: Any  # the configured engine: model, tokenizer, device, chat format
    engines: dict[str, Any]  # {method: engine over the same model}
    limit: int  # memory limit on the process's total (bytes)
    base: int  # bytes held before any cell ran
    window: int | None  # the model's trained context
    kv_per_token: int


def start_run(cfg, store, methods: list[str], memory_limit: str | None, world, suite: str, seed: int,
              haystack: str | None, max_new_tokens: Any, settings: dict[str, Any], meta: dict[str, Any]) -> EvalRun:
    """Load the haystack and the engines, refuse a resume with other settings, and record the run's settings
    and figures in the store's meta (`settings`: the suite's own, `meta`: its grid)."""
    from symphony.corpus import builtin_text, load_text
    from symphony.models.info import context_window, kv_bytes_per_token

    corpus = load_text(haystack) if haystack else builtin_text()
    settings = run_settings(cfg, seed, haystack, corpus, max_new_tokens, **settings)
    _settings_guard(store, settings)
    base_engine, engines, limit, base = load_engines(cfg, methods, memory_limit, world)
    model = base_engine.model
    run = EvalRun(corpus, base_engine, engines, limit, base, context_window(model.config),
                  kv_bytes_per_token(model.config, model.dtype.itemsize))
    store.meta.update({"suite": suite, "settings": settings, "model_window": run.window,
                       "kv_bytes_per_token": run.kv_per_token, "memory_limit_bytes": limit,
                       "device": str(base_engine.device), **meta})
    return run


def pending_cells(store, grid: list[tuple], methods: list[str], key: Callable[[str, tuple], dict], bar):
    """(cell, methods still to run on it) for each cell of `grid` this process owns, skipping rows a resumed run
    has; the progress bar moves past the rest. `key(method, cell)` names a row's fields."""
    for cell in grid:
        mine = [m for m in methods if store.owns(**key(m, cell))]
        todo = [m for m in mine if not store.has(**key(m, cell))]
        bar.update(len(mine) - len(todo))
        if todo:
            yield cell, todo


def record(store, row: dict[str, Any], window: int | None, bar) -> None:
    """Save a finished row (marked when its context is past the model's trained window) and move the bar."""
    row["beyond_window"] = bool(window and row["context_len"] > window)
    store.add(row)
    bar.update(1)


def finish(store, bar) -> bool:
    """Close the bar and merge a sharded run's rows; True in the process that reports (rank 0)."""
    bar.close()
    return store.finish()


def measure(row: dict[str, Any], proj: int, limit: int, device: torch.device, run: Callable[[], Any]) -> Any:
    """run() unless its projected memory `proj` is over `limit`; the row gets status (ok, over_limit, oom) and
    seconds. run()'s result, or None when it was not run or ran out of memory."""
    if proj > limit:
        row.update(status="over_limit", projected_bytes=proj)
        return None
    t0 = time.perf_counter()
    try:
        result = run()
    except torch.cuda.OutOfMemoryError:
        row.update(status="oom", projected_bytes=proj)
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.update(seconds=round(time.perf_counter() - t0, 3), status="ok")
    return result


def run_trial(engine, ids: list[int], question: str, max_new_tokens: int) -> str:
    """Haystack then question as one user message through the chat template (as `symphony demo`);
    the greedy answer, decoded."""
    return engine.answer(question, torch.tensor(ids, dtype=torch.long), max_new_tokens=max_new_tokens).strip()


def _acc(rows: list[dict]) -> float | None:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else None


def summarize(rows: list[dict]) -> dict[str, Any]:
    """{"summary": {method: {accuracy, correct, trials, over_limit, oom, by_length, by_depth}}};
    cells not measured (over_limit, oom) are counted, never scored."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r.get("status", "ok") == "ok"]
        lengths = sorted({r["context_len"] for r in mine})
        depths = sorted({r["depth"] for r in mine})
        summary[method] = {
            "accuracy": _acc(ok),
            "correct": sum(bool(r["correct"]) for r in ok),
            "trials": len(ok),
            "over_limit": sum(r.get("status") == "over_limit" for r in mine),
            "oom": sum(r.get("status") == "oom" for r in mine),
            "by_length": {str(n): _acc([r for r in ok if r["context_len"] == n]) for n in lengths},
            "by_depth": {str(d): _acc([r for r in ok if r["depth"] == d]) for d in depths},
        }
    return {"summary": summary}


def fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _settings_guard(store: ResultStore | ShardedResults, settings: dict[str, Any]) -> None:
    """A resumed run must measure the same thing as the run it continues."""
    old = store.previous.get("settings")
    if old is None or old == settings:
        return
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    raise SymphonyError(f"{store.path} was made with different settings ({', '.join(diff)}); "
                        "resume with the same options, or choose another --out")


def run_needle(cfg, methods: list[str], out: Path, resume: bool = False, memory_limit: str | None = None,
               lengths: list[int] | None = None, depths: list[int | float] | None = None, trials: int = 1,
               seed: int = 0, haystack: str | None = None, needle_kind: str = "number", distractors: int = 0,
               max_new_tokens: int = 32, echo: Callable[[str], None] = click.echo) -> dict[str, Any] | None:
    """Run the grid (skipping cells already in out/needle.json when resuming); write JSON, heatmaps, table.
    Under accelerate launch / torchrun the cells are split across the processes (`shards`); rank 0 merges,
    draws and prints, and returns the results, the other ranks return None."""
    lengths = lengths or [1024 << i for i in range(6)]
    depths = depths if depths is not None else parse_depths(DEFAULT_DEPTHS)
    if trials < 1:
        raise SymphonyError("--trials must be at least 1")
    if needle_kind not in NEEDLE_KINDS:
        raise SymphonyError(f"unknown needle kind {needle_kind!r}; choose {', '.join(NEEDLE_KINDS)}")
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise SymphonyError(f"--distractors must be between 0 and {MAX_DISTRACTORS}; got {distractors}")
    path = Path(out) / "needle.json"
    world = join_world()
    echo = quiet_unless_main(world, echo)
    cfg = process_config(cfg, world)
    grid = [(n, d, t) for n in lengths for d in depths for t in range(trials)]
    # one cell per (method, length, depth, trial), in the order one process writes its rows
    cells = [(m, n, d, t) for n, d, t in grid for m in methods]
    store = ShardedResults(path, ("method", "context_len", "depth", "trial"), cells, resume=resume,
                           deal=deal_order(grid, methods), checked=("settings",), derive=summarize, world=world)

    run = start_run(cfg, store, methods, memory_limit, world, "needle", seed, haystack, max_new_tokens,
                    dict(needle=needle_kind, distractors=distractors),
                    dict(lengths=lengths, depths=depths, trials=trials, methods=methods))
    corpus, base_engine, engines, limit, base = run.corpus, run.engine, run.engines, run.limit, run.base
    model, tok, device = base_engine.model, base_engine.tokenizer, base_engine.device
    window, kv_per_token = run.window, run.kv_per_token
    hay_tok = _CorpusTokenizer(tok, corpus)
    before, after = base_engine.chat_format.first_user

    # rank 0's bar stands for the run (its share of the cells); the others would draw over it
    bar = tqdm(total=len(store.mine), desc="needle", unit="trial", disable=not world.main)
    cell_key = lambda m, cell: dict(method=m, context_len=cell[0], depth=cell[1], trial=cell[2])  # noqa: E731
    for (n, d, t), todo in pending_cells(store, grid, methods, cell_key, bar):
        needles, ids = cell_input(hay_tok, corpus, n, d, t, seed, needle_kind, distractors)
        target = needles[0]
        # tokens besides the haystack: template, question, recalled spans, answer (a `full` cache holds them too)
        extra = (len(tok(before + "\n\n" + target.question + after, add_special_tokens=False).input_ids)
                 + cfg.cache.recall_budget + max_new_tokens)
        for m in todo:
            eng = engines[m]
            proj = projected_bytes(model, n + extra, eng.capacity, cfg.cache.segment_len, kv_per_token, base)
            row: dict[str, Any] = {"method": m, "context_len": n, "depth": d, "trial": t, "expected": target.value,
                                   "generated": None, "correct": None, "seconds": None}
            bar.set_postfix_str(f"{m} {fmt_len(n)} @{d}%")
            generated = measure(row, proj, limit, device, lambda: run_trial(eng, ids, target.question, max_new_tokens))
            if generated is not None:
                row.update(generated=generated, correct=contains_answer(generated, target.value))
            record(store, row, window, bar)
    if not finish(store, bar):
        return None

    summary = summarize(store.rows)["summary"]
    model_name = cfg.model.name
    for m in dict.fromkeys(r["method"] for r in store.rows):
        plot_heatmap(store.rows, m, Path(out) / f"needle_{m}.png", model_name=model_name, window=window)
    for line in accuracy_table(store.rows, summary):
        echo(line)
    echo(f"results: {path}; heatmaps: {', '.join(f'needle_{m}.png' for m in summary)}")
    return {"rows": store.rows, "summary": summary, "path": path}


# -- reporting ---------------------------------------------------------------------------------------
def accuracy_table(rows: list[dict], summary: dict[str, Any]) -> list[str]:
    """method x length accuracy; 'over' where a cell was over the memory limit (or ran out of memory)."""
    lengths = sorted({r["context_len"] for r in rows})
    head = f"{'method':<10}" + "".join(f"{fmt_len(n):>8}" for n in lengths) + f"{'all':>8}"
    lines = ["needle accuracy by context length", head]
    for m, s in summary.items():
        cells = []
        for n in lengths:
            here = [r for r in rows if r["method"] == m and r["context_len"] == n]
            acc = s["by_length"].get(str(n))
            if acc is not None:
                cells.append(f"{acc:>8.0%}")
            elif here and all(r.get("status") in NOT_RUN for r in here):
                cells.append(f"{'over':>8}")
            else:
                cells.append(f"{'-':>8}")
        total = f"{s['accuracy']:>8.0%}" if s["accuracy"] is not None else f"{'-':>8}"
        lines.append(f"{m:<10}" + "".join(cells) + total)
    return lines


def draw_grid(ax, acc, skipped, xlabels: list[str], ylabels: list[str]):
    """A heatmap of scores in 0..1 (nan: empty) coloured red -> yellow -> green, each cell annotated; `skipped`
    cells (over the memory limit) grey and hatched. The image, for a colour bar."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.patches import Rectangle

    cmap = LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"]).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(ylabels)):
        for j in range(len(xlabels)):
            if skipped[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#d0d0d0", edgecolor="#808080",
                                       hatch="///", linewidth=0.5))
                ax.text(j, i, "over\nlimit", ha="center", va="center", fontsize=7, color="#404040")
            elif not np.isnan(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.0%}", ha="center", va="center", fontsize=8, color="black")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xticks(np.arange(-0.5, len(xlabels)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(ylabels)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    return im


def plot_heatmap(rows: list[dict], method: str, path: str | Path, model_name: str = "",
                 window: int | None = None) -> Path:
    """Depth (y) x context length (x), accuracy coloured red -> yellow -> green, each cell annotated;
    cells over the memory limit are grey and hatched; a dashed line marks the model's context window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = [r for r in rows if r["method"] == method]
    lengths = sorted({r["context_len"] for r in mine})
    depths = sorted({r["depth"] for r in mine})
    acc = np.full((len(depths), len(lengths)), np.nan)
    skipped = np.zeros_like(acc, dtype=bool)
    for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
            here = [r for r in mine if r["depth"] == d and r["context_len"] == n]
            ok = [r for r in here if r.get("status", "ok") == "ok"]
            if ok:
                acc[i, j] = _acc(ok)
            elif here:
                skipped[i, j] = True

    fig, ax = plt.subplots(figsize=(max(5.5, 1.0 * len(lengths) + 2.5), max(3.5, 0.42 * len(depths) + 1.8)))
    im = draw_grid(ax, acc, skipped, [fmt_len(n) for n in lengths], [f"{d:g}%" for d in depths])
    xlabel = "context length (tokens)"
    if window and lengths[0] <= window < lengths[-1]:
        x = max(j for j, n in enumerate(lengths) if n <= window) + 0.5
        ax.axvline(x, color="black", linestyle="--", linewidth=1.2)
        xlabel += f"; dashed: the model's context window ({fmt_len(window)})"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("needle depth (% of the document)")
    ok_rows = [r for r in mine if r.get("status", "ok") == "ok"]
    overall = _acc(ok_rows)
    title = f"needle in a haystack: {method}" + (f" ({model_name})" if model_name else "")
    if overall is not None:
        title += f"\naccuracy {overall:.0%} over {len(ok_rows)} trials"
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="accuracy")
    return save_plot(fig, path, dpi=120)
