"""Recall's search alone, no model: which planted facts of `symphony eval ruler`'s samples the lexical search re-reads.

    python benchmarks/recall_search_check.py --length 16k --samples 5 --out /tmp/search.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/recall_search_check.py --out /tmp/before.json

Each sample's whole context goes into a recall archive (as if every token had left the cache; no window), the
question (as the chat sends it) is searched with the default budget and hops, and the row records how many
references' planted sentences came back whole, how many planted sentences of any key came back (the asked ones
plus look-alikes), and the tokens re-read. It runs in a minute or two on a CPU, so a change to the search can be
compared with the code before it (`PYTHONPATH`) over every task on both haystacks before any model run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--haystacks", default="builtin,manpages")
    ap.add_argument("--length", default="16k")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--budget", type=int, default=192, help="cache.recall_budget")
    ap.add_argument("--hops", type=int, default=4, help="cache.recall_hops")
    ap.add_argument("-c", "--config", default="smollm2-135m", help="whose tokenizer")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from symphony.config import load_config
    from symphony.corpus import load_text
    from symphony.errors import SymphonyError
    from symphony.evaluation.methods import parse_lengths
    from symphony.evaluation.ruler_tasks import TASKS, Sources, make_sample
    from symphony.models.loading import load_tokenizer
    from symphony.runtime.facts import TokenKinds
    from symphony.runtime.recall import RecallLedger

    try:
        (length,) = parse_lengths(args.length)
        tok = load_tokenizer(load_config(args.config).model)
    except (ValueError, SymphonyError) as e:
        print(f"recall_search_check: {e}", file=sys.stderr)
        return 2
    kinds = TokenKinds.from_tokenizer(tok)
    rows = []
    for hay in args.haystacks.split(","):
        sources = Sources(tok, load_text(hay))
        for task in TASKS:
            if hay != "builtin" and TASKS[task].haystack != "essay":
                continue
            for i in range(args.samples):
                s = make_sample(task, sources, length, i, 0)
                ids = torch.tensor(sources.encode(s.preamble) + s.context)
                archive = RecallLedger(capacity_tokens=len(ids) + 16, span_len=16)
                archive.add(torch.arange(len(ids)), ids, torch.zeros(len(ids)))
                question = tok("\n\n" + s.question, add_special_tokens=False).input_ids
                runs = archive.search(question, args.budget, kinds=kinds, hops=args.hops)
                reread = "".join(tok.decode(r) + "\n" for r in runs)
                rows.append({"haystack": hay, "task": task, "sample": i, "references": len(s.references),
                             "whole": sum(any(ref in n and n in reread for n in s.needles) for ref in s.references),
                             "planted_reread": sum(n in reread for n in s.needles),
                             "tokens": len(tok(reread, add_special_tokens=False).input_ids)})
    for hay in dict.fromkeys(r["haystack"] for r in rows):
        sel = [r for r in rows if r["haystack"] == hay]
        print(f"{hay}: every reference re-read whole in {sum(r['whole'] == r['references'] for r in sel)}/{len(sel)} "
              f"samples; planted sentences re-read {sum(r['planted_reread'] for r in sel)} (references "
              f"{sum(r['references'] for r in sel)}); tokens re-read {sum(r['tokens'] for r in sel)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"length": length, "samples": args.samples, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
