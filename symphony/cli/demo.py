"""`symphony demo`: the main job in one command. Facts planted in a document 1.5x as long as the model's
context window, streamed at constant memory, then asked for; every other bounded policy (the StreamingLLM
baseline) runs on the same input."""
from __future__ import annotations

import random
import time

import click
import torch

from symphony.corpus import builtin_text
from symphony.haystack import build_haystack, contains_answer, random_needle
from symphony.models.info import context_window, kv_bytes_per_token
from symphony.report import fmt_bytes
from symphony.runtime.engine import StreamingEngine, engine_from_config
from symphony.runtime.policies import POLICIES
from symphony.runtime.stream import peak_memory_bytes


def demo_policies() -> list[str]:
    """The bounded policies (the document is past `full`'s reach), the one with the memories first."""
    bounded = [p for p in POLICIES.values() if p.bounded]
    return [p.name for p in sorted(bounded, key=lambda p: not p.uses_memory)]


def run_demo(cfg, length: int | None = None, depths=(0.3, 0.7), seed: int = 0) -> list[dict]:
    engine = engine_from_config(cfg, progress=True)
    model, tok = engine.model, engine.tokenizer
    window = context_window(model.config) or 4096
    length = length or (3 * window) // 2
    corpus = builtin_text()
    per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
    click.echo(f"model: {cfg.model.name} ({type(model).__name__}), trained context {window:,} tokens, "
               f"KV {fmt_bytes(per_token)}/token")
    click.echo(f"document: {length:,} tokens of Python's documentation with one planted fact; "
               f"full attention would need {fmt_bytes(length * per_token)} of KV cache.\n")
    rng = random.Random(seed)
    rows = []
    policies = demo_policies()
    for depth in depths:
        needle = random_needle(rng)
        ids = build_haystack(tok, corpus, length, depth, [needle], offset=rng.randrange(10_000))
        click.echo(f"planted at {depth:.0%}: \"{needle.sentence.strip()}\"")
        for policy in policies:
            eng = StreamingEngine(model, tok, cfg.cache, cfg.salience, policy=policy, progress=True)
            stream = eng.new_stream()
            t0 = time.perf_counter()
            answer = eng.answer(needle.question, torch.tensor(ids), stream=stream, max_new_tokens=32,
                                desc=f"{policy:>8} ingest").strip()
            ok = contains_answer(answer, needle.value)
            row = dict(policy=policy, depth=depth, expected=needle.value, answer=answer, correct=ok,
                       cache_bytes=stream.nbytes(), seconds=time.perf_counter() - t0)
            rows.append(row)
            click.echo(f"  {policy:>8}: {'RIGHT' if ok else 'wrong'}  \"{answer[:70]}\"  "
                       f"(cache {fmt_bytes(row['cache_bytes'])}, {row['seconds']:.0f} s)")
    click.echo("\nsummary:")
    for policy in policies:
        got = [r for r in rows if r["policy"] == policy]
        click.echo(f"  {policy:>8}: {sum(r['correct'] for r in got)}/{len(got)} facts recalled, "
                   f"cache {fmt_bytes(got[0]['cache_bytes'])} at {length:,} tokens")
    click.echo(f"  peak memory of this process: {fmt_bytes(peak_memory_bytes(engine.device))}")
    return rows
