"""Does recall re-read a fact asked about in other words? The HEP-DNA retriever against lexical recall alone.

    python benchmarks/retriever_check.py --haystacks builtin,manpages --length 4096 [--out docs/results/retriever_check.json]

For each of `symphony eval ruler`'s paraphrase templates (held out from the retriever's training), one fact is
planted at a random depth of `--length` tokens of each haystack with 3 look-alikes (same template, other names),
streamed once through the default cache (the fact leaves the KV cache: only the archive has it), and the
recall search runs twice on the same stream, with and without the retriever, for two questions:
- `named`: the template's question (it shares only the name with the fact);
- `unnamed`: the same question without the name, so it shares no content word at all (one fact of that kind
  per document: the look-alikes are other templates here).
A row counts the fact as found when its sentence is re-read whole. No answer is generated: this measures what
recall hands the model, not what the model then says.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--haystacks", default="builtin,manpages")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("-c", "--config", default="smollm2-135m")
    ap.add_argument("--retriever", default="auto", help="memory.retriever: auto | FILE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from symphony.config import load_config
    from symphony.corpus import load_text
    from symphony.evaluation.ruler_tasks import NAMES, PARAPHRASES
    from symphony.runtime import chat
    from symphony.runtime.engine import engine_from_config

    cfg = load_config(args.config, [f"memory.retriever={args.retriever}"])
    eng = engine_from_config(cfg, progress=False)
    if eng.retriever is None:
        print("error: no retriever (memory.retriever found none for this model); pass --retriever FILE", file=sys.stderr)
        return 2
    tok = eng.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    rows = []
    for hay in args.haystacks.split(","):
        text = load_text(hay)
        rng = random.Random(f"{args.seed}:{hay}")
        for k, (fact_t, question_t, kind) in enumerate(PARAPHRASES):
            names = rng.sample(NAMES, 4)
            value = str(rng.randrange(1700, 2020)) if kind == "year" else str(rng.randrange(100, 99999))
            fact = fact_t.format(name=names[0], value=value)
            others = [t for t in PARAPHRASES if t[0] != fact_t]
            planted = [fact] + [f.format(name=n, value=str(rng.randrange(1700, 2020))) for (f, _, _), n in
                                zip(rng.sample(others, 3), names[1:])]
            start = rng.randrange(0, max(1, len(text) - 40 * args.length))
            hay_ids = enc(text[start:start + 6 * args.length])[:args.length]
            ids = list(hay_ids)
            for f in planted:  # each after a line end near a random depth in the first 60%
                at = rng.randrange(16, int(0.6 * len(ids)))
                while at < len(ids) - 1 and "\n" not in tok.decode(ids[at - 1:at]):
                    at += 1
                ids[at:at] = enc(f + "\n")
            stream = eng.new_stream()
            t0 = time.time()
            eng.ingest(stream, torch.tensor(ids))
            in_cache = fact in tok.decode([t for t in stream.cache.token_ids.tolist() if t >= 0])
            questions = {"named": question_t.format(name=names[0]),
                         "unnamed": question_t.format(name="").replace("  ", " ").replace("the  ", "the ")}
            for label, q in questions.items():
                for mode in ("retriever", "lexical"):
                    saved = eng._retriever
                    if mode == "lexical":
                        eng._retriever = None
                    try:
                        reread = tok.decode(chat.recalled(eng, stream, q))
                    finally:
                        eng._retriever = saved
                    rows.append({"haystack": hay, "template": k, "question": label, "mode": mode, "asked": q,
                                 "fact": fact, "found": fact in reread, "in_cache": in_cache,
                                 "reread_tokens": len(enc(reread)), "seconds": round(time.time() - t0, 1)})
            found = {(r["question"], r["mode"]): r["found"] for r in rows[-4:]}
            print(f"{hay} t{k:02d} " + " ".join(f"{q}/{m}={'Y' if v else '-'}" for (q, m), v in found.items()),
                  flush=True)
    print("\nfound (fact re-read whole), by haystack, question and recall:")
    for hay in args.haystacks.split(","):
        for label in ("named", "unnamed"):
            for mode in ("retriever", "lexical"):
                sel = [r for r in rows if (r["haystack"], r["question"], r["mode"]) == (hay, label, mode)]
                print(f"  {hay:<9} {label:<8} {mode:<9} {sum(r['found'] for r in sel)}/{len(sel)}")
    if args.out:
        from symphony.io import atomic_write_json

        atomic_write_json(Path(args.out), {"settings": {**vars(args), "retriever_file": str(cfg.memory.retriever)},
                                           "date": time.strftime("%Y-%m-%d"), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
