"""Streaming perplexity over one long text: every method scores the same tokens (positions 1..N-1).

Bounded methods (`sinks`, `symphony`) stream the text through their caches segment by segment and score
each token from the logits they had when it arrived. An unbounded method (`full`) is the model with its
whole context up to its trained window: one growing DynamicCache when the text fits the window, else the
strided sliding-window evaluation of the Hugging Face perplexity guide (window = the context window,
stride = window // 2, each token scored once, with as much left context as the window allows), run in
chunks so memory stays bounded by the window.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from symphony.errors import SymphonyError
from symphony.evaluation.limits import projected_bytes
from symphony.evaluation.needle import _settings_guard, memory_budget
from symphony.evaluation.shards import (ShardedResults, join_world, process_config, processes_on_device,
                                        quiet_unless_main)
from symphony.io import save_plot
from symphony.models.compat import with_cache
from symphony.runtime.policies import POLICIES


# -- tokens ------------------------------------------------------------------------------------------
def load_tokens(tokenizer, text: str, max_tokens: int) -> list[int]:
    """The first `max_tokens` tokens of `text` (fewer if it is shorter; never cycled). A long text is
    tokenised by growing prefixes, so a dataset of any size is not tokenised whole for 8k tokens."""
    chars = max(4096, 8 * max_tokens)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False).input_ids
        if chars >= len(text) or len(ids) > max_tokens + 64:  # margin: the cut may split the last word
            return ids[:max_tokens]
        chars *= 4


def tokens_fingerprint(ids: list[int]) -> str:
    return hashlib.sha1(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]


# -- scoring -----------------------------------------------------------------------------------------
def streaming_nll(engine, ids: list[int]) -> torch.Tensor:
    """NLL [N-1] of tokens 1..N-1 while streaming `ids` through `engine` (its policy's cache).
    Segment logits[t] predict token t+1; a segment's first token is predicted by the previous segment's
    last logits."""
    n = len(ids)
    nll = torch.full((max(n - 1, 0),), float("nan"), dtype=torch.float64)
    state: dict[str, Any] = {"prev": None, "pos": 0}

    def on_segment(stream, seg: torch.Tensor, logits: torch.Tensor) -> None:
        pos, prev = state["pos"], state["prev"]
        seg = seg.to(logits.device)
        lp = logits.float()
        if prev is None:
            pred, targets, first = lp[:-1], seg[1:], 1
        else:
            pred, targets, first = torch.cat([prev[None], lp[:-1]]), seg, pos
        if targets.numel():
            scored = F.cross_entropy(pred, targets, reduction="none")
            nll[first - 1 : first - 1 + targets.numel()] = scored.double().cpu()
        state["prev"] = lp[-1].clone()
        state["pos"] = pos + seg.numel()

    stream = engine.new_stream()
    engine.ingest(stream, torch.tensor(ids, dtype=torch.long), on_segment=on_segment)
    return nll


@torch.no_grad()
def strided_nll(model, ids: list[int], window: int, stride: int, segment_len: int) -> tuple[torch.Tensor, int]:
    """NLL [N-1] of tokens 1..N-1 with a sliding window of `window` tokens moved `stride` at a time (the
    Hugging Face perplexity guide's method). Each token is scored once, by the first window that ends past
    it, so it sees at least window - stride tokens of left context (all of them inside the first window).
    Each window starts a fresh cache fed `segment_len` tokens per forward, so memory is bounded by the
    window whatever N is. Returns (nll, number of windows)."""
    if window < 2 or not 0 < stride < window:
        raise SymphonyError(f"need window >= 2 and 0 < stride < window; got window {window}, stride {stride}")
    device = next(model.parameters()).device
    all_ids = torch.tensor(ids, dtype=torch.long, device=device)
    n = all_ids.numel()
    nll = torch.full((max(n - 1, 0),), float("nan"), dtype=torch.float64)
    scored_to, end, windows = 1, min(window, n), 0  # tokens < scored_to are scored (token 0 never is)
    while scored_to < n:
        begin = max(0, end - window)
        windows += 1
        cache = DynamicCache(config=model.config)
        for cs in range(begin, end, segment_len):
            ce = min(cs + segment_len, end)
            lo = max(cs, scored_to - 1)  # logits at positions [lo, hi) predict tokens [lo+1, hi+1)
            hi = min(ce, end - 1)  # the window's last position predicts a token outside it
            out = model(**with_cache(model, cache, input_ids=all_ids[None, cs:ce], use_cache=True,
                                      logits_to_keep=max(ce - lo, 1)))
            if hi > lo:
                logits = out.logits[0, : hi - lo].float()
                nll[lo:hi] = F.cross_entropy(logits, all_ids[lo + 1 : hi + 1], reduction="none").double().cpu()
        del cache
        scored_to = end
        end = min(end + stride, n)
    return nll, windows


def bucket_means(nll: torch.Tensor, bucket: int) -> list[float]:
    """Mean NLL per `bucket` token positions; nll[i] scores token position i+1, so the first bucket
    (positions 0..bucket-1) has bucket-1 scored tokens."""
    out = []
    positions = torch.arange(1, nll.numel() + 1)
    for start in range(0, nll.numel() + 1, bucket):
        sel = nll[(positions >= start) & (positions < start + bucket)]
        if sel.numel():
            out.append(float(sel.mean()))
    return out


# -- the suite ---------------------------------------------------------------------------------------
def run_ppl(cfg, methods: list[str], out: Path, resume: bool = False, memory_limit: str | None = None,
            text: str | None = None, dataset: str | None = None, split: str = "test", text_field: str = "text",
            max_tokens: int = 8192, bucket: int = 256, full_window: int | None = None, stride: int | None = None,
            echo: Callable[[str], None] = click.echo) -> dict[str, Any] | None:
    """Score the first `max_tokens` tokens with every method; write out/ppl.json and out/ppl.png. Under
    accelerate launch / torchrun the methods are split across the processes (`shards`); rank 0 merges, draws
    and prints, and returns the results, the other ranks return None."""
    from symphony.corpus import builtin_text, load_text
    from symphony.runtime.engine import StreamingEngine, engine_from_config
    from symphony.models.info import context_window, kv_bytes_per_token

    if text and dataset:
        raise SymphonyError("give --text or --dataset, not both")
    if max_tokens < 2:
        raise SymphonyError("--max-tokens must be at least 2 (the first token is never scored)")
    if bucket < 1:
        raise SymphonyError("--bucket must be at least 1")
    path = Path(out) / "ppl.json"
    world = join_world()
    echo = quiet_unless_main(world, echo)
    cfg = process_config(cfg, world)
    # a method scores the whole text in one pass, so the method is the cell
    store = ShardedResults(path, ("method",), [(m,) for m in methods], resume=resume, checked=("settings",),
                           sections=("per_position",), world=world)
    source = text or dataset or "builtin"
    if dataset:
        body = load_text(dataset, split=split, text_field=text_field)
    else:
        body = load_text(text) if text else builtin_text()

    base_engine = engine_from_config(cfg, progress=False)
    model, tok = base_engine.model, base_engine.tokenizer
    ids = load_tokens(tok, body, max_tokens)
    n = len(ids)
    if n < 2:
        raise SymphonyError(f"the text has {n} token(s); perplexity needs at least 2")
    if n < max_tokens:
        echo(f"note: the text has only {n:,} tokens (asked for {max_tokens:,}); scoring all of them")
    model_window = context_window(model.config)
    window = full_window or model_window or n
    stride = stride or max(window // 2, 1)
    unbounded = [m for m in methods if not POLICIES[m].bounded]
    if unbounded and n > window and stride >= window:  # checked now, not after the other methods ran
        raise SymphonyError(f"--stride {stride} must be less than {unbounded[0]}'s window ({window} tokens); "
                            "lower --stride")
    settings = {
        "model": cfg.model.name, "dtype": cfg.model.dtype, "source": source,
        "split": split if dataset else None, "tokens": n, "tokens_sha1": tokens_fingerprint(ids), "bucket": bucket,
        "full_window": window, "stride": stride, "salience": dict(vars(cfg.salience)),
        **({"checkpoint": cfg.memory.checkpoint} if cfg.memory.checkpoint else {}),  # trained adapters used
        **({} if cfg.memory.copy_head else {"copy_head": False}),  # ablation: trained copy head not mixed in
        "cache": {k: v for k, v in vars(cfg.cache).items() if k != "policy"},
    }
    _settings_guard(store, settings)
    per_position: dict[str, list[float]] = store.section("per_position")
    device = base_engine.device
    kv_per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
    limit, base = memory_budget(memory_limit, device, processes_on_device(device, world))
    store.meta.update({"suite": "ppl", "settings": settings, "model_window": model_window, "device": str(device),
                       "memory_limit_bytes": limit, "methods": methods})

    for m in methods:
        if not store.owns(method=m) or store.has(method=m):
            continue
        eng = StreamingEngine(model, tok, cfg.cache, cfg.salience, policy=m)
        seg = cfg.cache.segment_len
        bounded = POLICIES[m].bounded  # unbounded: the model's own window, strided past it
        strided = not bounded and n > window
        budget = eng.capacity if bounded else window
        proj = projected_bytes(model, n if bounded else min(n, window), eng.capacity, seg, kv_per_token, base)
        row: dict[str, Any] = {"method": m, "tokens": n, "scored": 0, "nll": None, "ppl": None, "budget": budget,
                               "mode": "strided" if strided else "streaming", "seconds": None}
        if strided:
            row.update(window=window, stride=stride)
        if proj > limit:
            row.update(status="over_limit", projected_bytes=proj)
        else:
            echo(f"{m}: scoring {n - 1:,} tokens ({row['mode']}, budget {budget:,} slots)")
            t0 = time.perf_counter()
            try:
                if strided:
                    nll, windows = strided_nll(model, ids, window, stride, seg)
                    row["windows"] = windows
                else:
                    nll = streaming_nll(eng, ids)
            except torch.cuda.OutOfMemoryError:
                row.update(status="oom", projected_bytes=proj)
            else:
                if torch.isnan(nll).any():
                    # a bug in the scoring, never a property of the data
                    raise RuntimeError(f"{m}: {int(torch.isnan(nll).sum())} tokens were not scored")
                mean = float(nll.mean())
                row.update(scored=int(nll.numel()), nll=mean, ppl=math.exp(mean),
                           seconds=round(time.perf_counter() - t0, 3), status="ok")
                per_position[m] = bucket_means(nll, bucket)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        store.add(row)
    if not store.finish():
        return None

    plot_ppl(store.rows, per_position, bucket, Path(out) / "ppl.png", model_name=cfg.model.name,
             model_window=model_window)
    for line in ppl_table(store.rows):
        echo(line)
    echo(f"results: {path}; plot: {Path(out) / 'ppl.png'}")
    return {"rows": store.rows, "per_position": per_position, "path": path}


def ppl_table(rows: list[dict]) -> list[str]:
    lines = [f"{'method':<10}{'tokens':>8}{'budget':>8}{'nll':>9}{'ppl':>10}  mode"]
    for r in rows:
        if r.get("status", "ok") == "ok":
            nums = f"{r['nll']:>9.4f}{r['ppl']:>10.3f}"
        else:
            nums = f"{r.get('status'):>19}"
        lines.append(f"{r['method']:<10}{r['tokens']:>8}{r['budget']:>8}{nums}  {r.get('mode', '')}")
    return lines


def plot_ppl(rows: list[dict], per_position: dict[str, list[float]], bucket: int, path: str | Path,
             model_name: str = "", model_window: int | None = None) -> Path:
    """Mean NLL per bucket of token positions, one line per method; dashed lines mark the model's context
    window and the bounded caches' budgets where they fall inside the text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    n_tokens = max((r["tokens"] for r in rows), default=0)
    for r in rows:
        m = r["method"]
        ys = per_position.get(m)
        if not ys or r.get("status", "ok") != "ok":
            continue
        xs = [(i * bucket + min((i + 1) * bucket, n_tokens)) / 2 for i in range(len(ys))]  # bucket middles
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=_color(m),
                label=f"{m} (ppl {r['ppl']:.2f}, budget {r['budget']:,})")
    marks = {}
    if model_window and model_window < n_tokens:
        marks[model_window] = "context window"
    for r in rows:
        if r.get("budget") and r["budget"] < n_tokens:
            marks.setdefault(r["budget"], "cache budget" if _bounded(r["method"]) else f"{r['method']}'s window")
    for x, label in marks.items():
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.text(x, 1.0, f" {label} {x:,}", transform=ax.get_xaxis_transform(), fontsize=7, va="top",
                color="grey")
    ax.set_xlabel(f"token position (mean NLL per {bucket} tokens)")
    ax.set_ylabel("negative log-likelihood (nats/token)")
    ax.set_title(f"streaming perplexity over {n_tokens:,} tokens" + (f" ({model_name})" if model_name else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_plot(fig, path, dpi=120)


def _color(method: str) -> str | None:
    policy = POLICIES.get(method)  # a plot of saved rows may name a policy this process has not registered
    return policy.color if policy else None


def _bounded(method: str) -> bool:
    policy = POLICIES.get(method)
    return policy.bounded if policy else True
