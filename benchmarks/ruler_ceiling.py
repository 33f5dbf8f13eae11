"""What the model does with perfect recall: RULER samples answered with their facts in plain view.

    python benchmarks/ruler_ceiling.py --tasks niah_multiquery,niah_multivalue --haystacks builtin,manpages \
        --samples 8 --length 16k [--out docs/results/ruler_ceiling.json]

For each sample of `symphony eval ruler` (the same generator, seed and sample index, so the same keys and values as
its rows), the model gets what Symphony hands it when recall is perfect: the task's preamble, the last `--window`
tokens of the sample's context (the cache's recent window), then every sentence holding a reference, in document
order, one per line (as recall re-reads them), then the question and RULER's answer prefix, all with full
attention (a plain `DynamicCache`; the prompt fits the model's window). Where this scores below 100, a Symphony
failure on the same task with every fact re-read is the model's, not recall's. Writes one JSON with every row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def plain_view_ids(sources, sample, window: int) -> tuple[list[int], list[str]]:
    """Preamble + the context's last `window` tokens + the reference sentences (document order), one per line."""
    text = sources.tokenizer.decode(sample.context)
    facts = [s for s in sample.needles if any(ref in s for ref in sample.references)]
    facts.sort(key=lambda s: text.find(s))
    reread = "".join(f" {s}\n" for s in facts)
    return sources.encode(sample.preamble) + sample.context[-window:] + sources.encode(reread + "\n"), facts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="niah_multiquery,niah_multivalue")
    ap.add_argument("--haystacks", default="builtin,manpages")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--length", default="16k", help="the ruler length whose samples are drawn")
    ap.add_argument("--window", type=int, default=1536, help="tokens of the context before the facts")
    ap.add_argument("-c", "--config", default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from symphony.config import load_config
    from symphony.corpus import load_text
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.ruler_tasks import TASKS, Sources, make_sample, parse_tasks, string_match_all
    from symphony.errors import SymphonyError
    from symphony.io import atomic_write_json
    from symphony.runtime.engine import engine_from_config

    try:
        tasks, (length,) = parse_tasks(args.tasks), parse_lengths(args.length)
    except (ValueError, SymphonyError) as e:
        print(f"ruler_ceiling: {e}", file=sys.stderr)
        return 2
    engine = engine_from_config(load_config(args.config), policy="full", progress=False)
    rows = []
    for hay in args.haystacks.split(","):
        sources = Sources(engine.tokenizer, load_text(hay))
        todo = [(t, i) for t in tasks if hay == "builtin" or TASKS[t].haystack == "essay" for i in range(args.samples)]
        for task, i in tqdm(todo, desc=f"ceiling {hay}", unit="sample"):
            sample = make_sample(task, sources, length, i, args.seed)
            ids, facts = plain_view_ids(sources, sample, args.window)
            t0 = time.perf_counter()
            reply = engine.answer(sample.question, torch.tensor(ids), max_new_tokens=TASKS[task].max_new_tokens,
                                  reply_prefix=sample.prefix).strip()
            rows.append({"haystack": hay, "task": task, "sample": i, "references": sample.references,
                         "facts": len(facts), "prediction": reply,
                         "score": 100 * string_match_all(reply, sample.references),
                         "seconds": round(time.perf_counter() - t0, 3)})
    print("| haystack | task | mean score | all references | samples |")
    print("|---|---|---:|---:|---:|")
    for hay in dict.fromkeys(r["haystack"] for r in rows):
        for task in dict.fromkeys(r["task"] for r in rows):
            got = [r["score"] for r in rows if r["haystack"] == hay and r["task"] == task]
            if got:
                print(f"| {hay} | {task} | {sum(got) / len(got):.0f} | {sum(s == 100 for s in got)} | {len(got)} |")
    if args.out:
        atomic_write_json(Path(args.out), {"suite": "ruler_ceiling", "settings": {
            "config": args.config, "length": length, "window": args.window, "seed": args.seed, "tasks": tasks,
            "haystacks": args.haystacks.split(","), "samples": args.samples}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
