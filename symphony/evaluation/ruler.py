"""`symphony eval ruler`: RULER's synthetic recall tasks (see ruler_tasks) x context length x samples, every
method on the same inputs.

Each sample is drawn from a generator seeded by (seed, task, length, index), so every method answers exactly the
same question about exactly the same context, and a resumed run rebuilds the same inputs. Rows are saved the
moment a sample finishes; a resumed run skips the ones it has. Scored as RULER does (string_match_all: the
share of the reference answers found in the reply), reported in percent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click
import torch
from tqdm.auto import tqdm

from symphony.errors import SymphonyError
from symphony.evaluation.limits import projected_bytes
from symphony.evaluation.needle import (NOT_RUN, deal_order, draw_grid, fmt_len, finish, measure, pending_cells,
                                        record, start_run)
from symphony.evaluation.ruler_tasks import TASKS, Sample, Sources, exact_all, make_sample, string_match_all
from symphony.evaluation.shards import ShardedResults, join_world, process_config, quiet_unless_main
from symphony.io import save_plot

DEFAULT_LENGTHS = "4k,16k"
KEY = ("task", "method", "context_len", "sample")


def run_sample(engine, ids: list[int], question: str, prefix: str, max_new_tokens: int) -> tuple[str, str]:
    """Preamble + context then the question as one user message; the reply starts with `prefix` (RULER's answer
    prefix). Returns the greedy text after it, and the text recall re-read before the question ('' for none)."""
    doc = torch.tensor(ids, dtype=torch.long)
    stream = engine.new_stream()
    reply = engine.answer(question, doc, stream=stream, max_new_tokens=max_new_tokens, reply_prefix=prefix)
    return reply.strip(), engine.tokenizer.decode(stream.reread)


def facts_reread(sample: Sample, reread: str) -> int:
    """How many of the references' planted sentences recall re-read whole (the diagnosis of a wrong answer:
    was the fact brought back, or was it there and the model missed it?)."""
    return sum(any(ref in sent and sent in reread for sent in sample.needles) for ref in sample.references)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def scores(rows: list[dict]) -> dict[tuple[str, str, int], float | None]:
    """{(task, method, length): mean score in percent over the measured samples (None: none measured)}."""
    cells: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        here = cells.setdefault((r["task"], r["method"], r["context_len"]), [])
        if r.get("status") == "ok":
            here.append(r["score"])
    return {k: _mean(v) for k, v in cells.items()}


def summarize(rows: list[dict]) -> dict[str, Any]:
    """{"summary": {method: {score, exact, samples, over_limit, oom, by_task, by_length}}}; scores in percent,
    averaged over samples (by_task, by_length) and over tasks (score: RULER's average)."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r.get("status") == "ok"]
        tasks = list(dict.fromkeys(r["task"] for r in mine))
        by_task = {t: _mean([r["score"] for r in ok if r["task"] == t]) for t in tasks}
        measured = [v for v in by_task.values() if v is not None]
        summary[method] = {
            "score": _mean(measured), "exact": _mean([100.0 * r["exact"] for r in ok]), "samples": len(ok),
            "over_limit": sum(r.get("status") == "over_limit" for r in mine),
            "oom": sum(r.get("status") == "oom" for r in mine),
            "by_task": by_task,
            "by_length": {str(n): _mean([r["score"] for r in ok if r["context_len"] == n])
                          for n in sorted({r["context_len"] for r in mine})},
        }
    return {"summary": summary}


def run_ruler(cfg, methods: list[str], out: Path, resume: bool = False, memory_limit: str | None = None,
              tasks: list[str] | None = None, lengths: list[int] | None = None, samples: int = 3, seed: int = 0,
              haystack: str | None = None, max_new_tokens: int | None = None,
              echo: Callable[[str], None] = click.echo) -> dict[str, Any] | None:
    """Run every (task, length, sample) for every method (skipping rows already in out/ruler.json when
    resuming); write the JSON and OUT/ruler.png and print the table. Under accelerate launch the rows are split
    across the processes; rank 0 merges, draws, prints and returns the results, the others return None."""

    tasks = tasks or list(TASKS)
    lengths = lengths or [4096, 16384]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SymphonyError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(TASKS)}")
    if samples < 1:
        raise SymphonyError("--samples must be at least 1")
    if haystack and haystack not in ("builtin", "manpages") and not Path(haystack).expanduser().is_file() \
            and (Path(haystack).suffix or "/" in haystack):
        raise SymphonyError(f"haystack file not found: {haystack}")
    path = Path(out) / "ruler.json"
    world = join_world()
    echo = quiet_unless_main(world, echo)
    cfg = process_config(cfg, world)
    grid = [(t, n, i) for t in tasks for n in lengths for i in range(samples)]
    cells = [(t, m, n, i) for t, n, i in grid for m in methods]
    deal = [(t, m, n, i) for m, t, n, i in deal_order(grid, methods)]
    store = ShardedResults(path, KEY, cells, resume=resume, deal=deal, checked=("settings",), derive=summarize,
                           world=world)

    run = start_run(cfg, store, methods, memory_limit, world, "ruler", seed, haystack, max_new_tokens or
                    {t: TASKS[t].max_new_tokens for t in TASKS},
                    {}, dict(tasks=tasks, lengths=lengths, samples=samples, methods=methods))
    corpus, base_engine, engines, limit, base = run.corpus, run.engine, run.engines, run.limit, run.base
    model, tok, device, window = base_engine.model, base_engine.tokenizer, base_engine.device, run.window
    sources = Sources(tok, corpus)  # the haystacks, tokenised once
    before, after = base_engine.chat_format.first_user

    bar = tqdm(total=len(store.mine), desc="ruler", unit="sample", disable=not world.main)
    cell_key = lambda m, cell: dict(task=cell[0], method=m, context_len=cell[1], sample=cell[2])  # noqa: E731
    for (t, n, i), todo in pending_cells(store, grid, methods, cell_key, bar):
        s = make_sample(t, sources, n, i, seed)
        ids = sources.encode(s.preamble) + s.context
        new_tokens = max_new_tokens or TASKS[t].max_new_tokens
        # tokens besides the context: template, preamble, question, prefix, recalled spans, the reply
        extra = (len(ids) - n + len(sources.encode(before + "\n\n" + s.question + after + s.prefix))
                 + cfg.cache.recall_budget + new_tokens)
        for m in todo:
            eng = engines[m]
            proj = projected_bytes(model, n + extra, eng.capacity, cfg.cache.segment_len, run.kv_per_token, base)
            row: dict[str, Any] = {"task": t, "method": m, "context_len": n, "sample": i,
                                   "references": s.references, "prediction": None, "score": None, "exact": None,
                                   "seconds": None}
            bar.set_postfix_str(f"{t} {m} {fmt_len(n)}")
            got = measure(row, proj, limit, device, lambda: run_sample(eng, ids, s.question, s.prefix, new_tokens))
            if got is not None:
                pred, reread = got
                row.update(prediction=pred, score=100.0 * string_match_all(pred, s.references),
                           exact=exact_all(pred, s.references))
                if reread:
                    row.update(reread=reread, facts_reread=facts_reread(s, reread))
            record(store, row, window, bar)
    if not finish(store, bar):
        return None

    summary = summarize(store.rows)["summary"]
    plot_ruler(store.rows, Path(out) / "ruler.png", model_name=cfg.model.name)
    for line in score_table(store.rows):
        echo(line)
    echo(f"results: {path}; plot: {Path(out) / 'ruler.png'}")
    return {"rows": store.rows, "summary": summary, "path": path}


# -- reporting ---------------------------------------------------------------------------------------
def _order(rows: list[dict], field: str) -> list:
    return list(dict.fromkeys(r[field] for r in rows))


def score_table(rows: list[dict]) -> list[str]:
    """Task x (method, length) scores in percent, and the average over tasks; 'over' where the cell was over
    the memory limit (or ran out of memory), '-' where nothing was measured."""
    tasks, methods, lengths = _order(rows, "task"), _order(rows, "method"), sorted({r["context_len"] for r in rows})
    cell = scores(rows)
    cols = [(m, n) for m in methods for n in lengths]
    width = max(8, *(len(f"{m} {fmt_len(n)}") + 2 for m, n in cols))
    name_w = max(len("average"), *(len(t) for t in tasks)) + 2
    lines = ["RULER score (%, string_match_all) by task, method and context length",
             f"{'task':<{name_w}}" + "".join(f"{m + ' ' + fmt_len(n):>{width}}" for m, n in cols)]

    def fmt(t: str, m: str, n: int) -> str:
        v = cell.get((t, m, n))
        if v is not None:
            return f"{v:>{width}.1f}"
        here = [r for r in rows if (r["task"], r["method"], r["context_len"]) == (t, m, n)]
        return f"{'over' if here and all(r.get('status') in NOT_RUN for r in here) else '-':>{width}}"

    for t in tasks:
        lines.append(f"{t:<{name_w}}" + "".join(fmt(t, m, n) for m, n in cols))
    avg = []
    for m, n in cols:
        v = _mean([x for x in (cell.get((t, m, n)) for t in tasks) if x is not None])
        avg.append(f"{v:>{width}.1f}" if v is not None else f"{'-':>{width}}")
    lines.append(f"{'average':<{name_w}}" + "".join(avg))
    return lines


def plot_ruler(rows: list[dict], path: str | Path, model_name: str = "") -> Path:
    """One panel per method: task (y) x context length (x), the score annotated; over-limit cells hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, methods, lengths = _order(rows, "task"), _order(rows, "method"), sorted({r["context_len"] for r in rows})
    cell = scores(rows)
    fig, axes = plt.subplots(1, len(methods), squeeze=False,
                             figsize=(len(methods) * max(3.2, 0.9 * len(lengths) + 2.4), max(3.0, 0.4 * len(tasks) + 1.8)))
    im = None
    for k, (m, ax) in enumerate(zip(methods, axes[0])):
        acc = np.full((len(tasks), len(lengths)), np.nan)
        skipped = np.zeros_like(acc, dtype=bool)
        for i, t in enumerate(tasks):
            for j, n in enumerate(lengths):
                v = cell.get((t, m, n))
                if v is not None:
                    acc[i, j] = v / 100
                else:
                    skipped[i, j] = (t, m, n) in cell
        im = draw_grid(ax, acc, skipped, [fmt_len(n) for n in lengths], tasks if k == 0 else [""] * len(tasks))
        ax.set_xlabel("context length (tokens)")
        overall = _mean([v for (t, mm, n), v in cell.items() if mm == m and v is not None])
        ax.set_title(m + ("" if overall is None else f": {overall:.1f}"), fontsize=10)
    fig.suptitle("RULER recall" + (f" ({model_name})" if model_name else ""), fontsize=11)
    if im is not None:
        fig.colorbar(im, ax=axes[0, -1], fraction=0.08, pad=0.04, label="score")
    return save_plot(fig, path, dpi=120)
