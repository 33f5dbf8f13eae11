"""Does recall's window-aware search change what is re-read? Per needle cell (the eval's own needles and
haystack), stream once through the untrained engine, then compare the spans recall picks from the archive
alone (the search before the window competed) with those it picks from archive + window.

    python benchmarks/recall_window_check.py --lengths 8k --distractors 3 [--set cache.window=1536 ...]
"""
from __future__ import annotations

import argparse

import torch

from symphony.config import load_config
from symphony.corpus import builtin_text
from symphony.runtime.engine import engine_from_config
from symphony.evaluation.methods import parse_lengths
from symphony.evaluation.needle import _CorpusTokenizer, cell_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="smollm2-135m-cpu")
    ap.add_argument("--lengths", default="8k")
    ap.add_argument("--depths", default="10,50,90")
    ap.add_argument("--distractors", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    eng = engine_from_config(cfg, policy="symphony", progress=False)
    corpus, c = builtin_text(), eng.cache_cfg
    hay_tok = _CorpusTokenizer(eng.tokenizer, corpus)
    text = lambda runs: eng.tokenizer.decode([t for r in runs for t in r])  # noqa: E731
    for n in parse_lengths(args.lengths):
        for d in (int(x) for x in args.depths.split(",")):
            needles, ids = cell_input(hay_tok, corpus, n, d, 0, 0, "number", args.distractors)
            stream = eng.new_stream()
            eng.ingest(stream, eng.encode(eng.chat_format.first_user[0]))
            eng.ingest(stream, torch.tensor(ids), desc=f"{n} @{d}%")
            q = eng.encode("\n\n" + needles[0].question).tolist()
            archive = stream.recall.search(q, c.recall_budget, min_gain=c.recall_min_gain)
            both = stream.recall.search(q, c.recall_budget, min_gain=c.recall_min_gain,
                                        live=(stream.cache.positions, stream.cache.token_ids))
            print(f"{n} @{d}% ({args.distractors} distractors): {'same' if archive == both else 'differs'}", flush=True)
            if archive != both:
                print(f"  archive only:      {text(archive)!r}\n  archive + window:  {text(both)!r}")


if __name__ == "__main__":
    main()
