"""Does recall hold on fact styles and question wordings it was never tuned on? Twelve templates, none of the
needle or RULER suites' (a code assignment, a table row, an ISBN, a password, a date of birth, ...), each asked by a
question that shares only the key's name with the fact.

    python benchmarks/recall_phrasing_check.py --haystacks builtin,manpages --length 16k \
        [--out docs/results/recall_phrasing.json]

Per haystack one document of `--length` tokens gets every template planted four times: the asked fact and three
look-alikes (the same template, other keys and values), 48 sentences at random depths. The document streams once
through the default cache; then, for each template, the recall search runs for its question (`found`: the asked
fact's sentence was re-read whole; `look-alikes`: how many of its three look-alikes were re-read beside it) and the
model answers on a copy of the stream (`answered`: the reply holds the value exactly). `in_cache`: the fact's
tokens were still in the cache's KV (ledger or window) when asked, so recall was not the only way to it.

`--search-only` loads no model: each document goes whole into a recall archive and only `found` and `look-alikes`
are judged, in seconds, so a change to the search can be tried on many draws (`--seeds 0-9`) before a model run.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

NAMES = ["Marlowe", "Quenby", "Tarrant", "Ellery", "Voss", "Hadley", "Brannock", "Ostrander", "Pellam", "Wyndham",
         "Corrigan", "Ashdown", "Farquhar", "Lindqvist", "Mabry", "Nettleton", "Okafor", "Prewitt", "Rosling",
         "Sandoval", "Thackeray", "Umberto", "Vandermeer", "Whitlock"]


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10 ** n))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


# (fact, question, value drawer): {key} is a name, {value} what the reply must hold
TEMPLATES = [
    ("The access code for the {key} vault is {value}.", "What number unlocks the {key} safe?",
     lambda r: _digits(r, 6)),
    ("Dr. {key}'s office is in room {value} on the east corridor.", "Where can I find Dr. {key}? Give the room.",
     lambda r: _digits(r, 4)),
    ('{KEY}_API_TOKEN = "{value}"', "Which API token does {key} use?", lambda r: _hex(r, 16)),
    ("Shipment {key} left the harbour carrying {value} crates of tea.",
     "How many boxes were on board shipment {key}?", lambda r: _digits(r, 4)),
    ("| host-{key} | port {value} | up |", "On which port does host-{key} listen?", lambda r: _digits(r, 5)),
    ("The wifi password at the {key} cabin is {value}.", "How do I get online at the {key} cabin?",
     lambda r: f"{r.choice(['amber', 'cobalt', 'juniper', 'saffron'])}-{_digits(r, 4)}"),
    ("{key} was born in {value} in a small village near the coast.", "In what year did {key} come into the world?",
     lambda r: str(r.randrange(1800, 1990))),
    ("Patient {key}: systolic pressure {value} at the morning check.", "What did the nurse measure for patient {key}?",
     lambda r: str(r.randrange(101, 189))),
    ("Set the {key} valve to {value} psi before starting the pump.", "What should the {key} regulator read?",
     lambda r: _digits(r, 3)),
    ("ISBN of the {key} atlas: {value}", "Which catalogue number identifies the {key} book of maps?",
     lambda r: f"978-{_digits(r, 1)}-{_digits(r, 4)}-{_digits(r, 4)}-{_digits(r, 1)}"),
    ("Our {key} branch closes its ledger on day {value} of each month.",
     "When does the {key} office do its monthly accounts?", lambda r: str(r.randrange(10, 29))),
    ("If the {key} alarm sounds, dial extension {value}.", "Who do I call when {key} goes off?",
     lambda r: _digits(r, 5)),
]


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    try:
        return list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a number or a range like 0-9") from None


def _document(rng: random.Random, text: str, length: int, tok) -> tuple[list[int], list[tuple]]:
    """`length` tokens of `text` with every template planted four times, each after a line end at a random depth:
    (token ids, planted facts as (template index, key, value, sentence, whether it is the asked one))."""
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    planted = []
    for k, (fact_t, _, draw) in enumerate(TEMPLATES):
        for j, key in enumerate(rng.sample(NAMES, 4)):
            value = draw(rng)
            planted.append((k, key, value, fact_t.format(key=key, KEY=key.upper(), value=value), j == 0))
    start = rng.randrange(0, max(1, len(text) - 8 * length))
    ids = enc(text[start:start + 6 * length])[:length]
    for sent in sorted((p[3] for p in planted), key=lambda _: rng.random()):
        at = rng.randrange(16, int(0.85 * len(ids)))
        while at < len(ids) - 1 and "\n" not in tok.decode(ids[at - 1:at]):
            at += 1
        ids[at:at] = enc(sent + "\n")
    return ids, planted


def _searcher(cache, tok, ids: list[int]):
    """No model: the whole document in a recall archive; (question, fact, value) -> (the re-read text, {})."""
    from symphony.runtime.facts import TokenKinds
    from symphony.runtime.recall import RecallLedger

    kinds = TokenKinds.from_tokenizer(tok)
    archive = RecallLedger(capacity_tokens=len(ids) + cache.span_len, span_len=cache.span_len)
    archive.add(torch.arange(len(ids)), torch.tensor(ids), torch.zeros(len(ids)))

    def ask(question: str, fact: str, value: str):
        runs = archive.search(tok("\n\n" + question, add_special_tokens=False).input_ids, cache.recall_budget,
                              kinds=kinds, hops=cache.recall_hops)
        return "".join(tok.decode(r) + "\n" for r in runs), {}
    return ask


def _asker(eng, ids: list[int], hay: str, max_new_tokens: int):
    """The document streamed once through the engine; (question, fact, value) -> (the re-read text, the answer
    asked on a copy of the stream, judged)."""
    from symphony.runtime import chat

    tok = eng.tokenizer
    before, after = chat.chat_format(eng).first_user
    stream = eng.new_stream()
    t0 = time.time()
    eng.ingest(stream, eng.encode(before))
    eng.ingest(stream, torch.tensor(ids), desc=f"{hay} document")
    ingest_s = time.time() - t0
    held = tok.decode([t for t in stream.cache.token_ids.tolist() if t >= 0])

    def ask(question: str, fact: str, value: str):
        asked = copy.deepcopy(stream)  # every question meets the document alone, as the first one does
        chat.ask(eng, asked, "\n\n" + question, after)
        reread = tok.decode(asked.reread)
        reply = tok.decode(eng.decode(asked, max_new_tokens), skip_special_tokens=True)
        return reread, {"value": value, "in_cache": fact in held, "answered": value in reply, "reply": reply.strip(),
                        "reread_tokens": len(tok(reread, add_special_tokens=False).input_ids) if reread else 0,
                        "ingest_s": round(ingest_s, 1)}
    return ask


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--haystacks", default="builtin,manpages")
    ap.add_argument("--length", default="16k")
    ap.add_argument("-c", "--config", default="smollm2-135m")
    ap.add_argument("--seeds", default="0", help="draws of names, values and places: 0, or 0-9")
    ap.add_argument("--search-only", action="store_true", help="no model: judge recall's search alone")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from symphony.config import load_config
    from symphony.corpus import load_text
    from symphony.errors import SymphonyError
    from symphony.evaluation.methods import parse_lengths
    from symphony.runtime.engine import engine_from_config

    try:
        (length,) = parse_lengths(args.length)
        seeds = _seeds(args.seeds)
        cfg = load_config(args.config)
        texts = {hay: load_text(hay) for hay in args.haystacks.split(",")}
    except (ValueError, SymphonyError) as e:
        print(f"recall_phrasing_check: {e}", file=sys.stderr)
        return 2
    if args.search_only:
        from symphony.models.loading import load_tokenizer

        tok, eng = load_tokenizer(cfg.model), None
    else:
        eng = engine_from_config(cfg, progress=False)
        tok = eng.tokenizer
    rows = []
    for seed in seeds:
        for hay, text in texts.items():
            ids, planted = _document(random.Random(f"{seed}:{hay}"), text, length, tok)
            ask = _searcher(cfg.cache, tok, ids) if eng is None else _asker(eng, ids, hay, args.max_new_tokens)
            for k in tqdm(range(len(TEMPLATES)), desc=f"{hay} questions", unit="q", leave=False):
                (_, key, value, fact, _), *others = [p for p in planted if p[0] == k and p[4]] + \
                    [p for p in planted if p[0] == k and not p[4]]
                question = TEMPLATES[k][1].format(key=key)
                reread, answer = ask(question, fact, value)
                rows.append({"haystack": hay, "seed": seed, "template": k, "question": question, "fact": fact,
                             "found": fact in reread, "look_alikes": sum(o[3] in reread for o in others),
                             "reread": reread[:400]})
                if answer:
                    r = rows[-1]
                    r.update(answer)
                    print(f"{hay} t{k:02d} found={'Y' if r['found'] else '-'} look-alikes={r['look_alikes']} "
                          f"answered={'Y' if r['answered'] else '-'} in_cache={'Y' if r['in_cache'] else '-'}",
                          flush=True)
    for r in rows:
        if not r["found"]:
            print(f"missed: {r['haystack']} seed {r['seed']} t{r['template']:02d} {r['fact']!r} <- {r['question']!r}")
    print("\n| haystack | found whole | look-alikes re-read | answered exactly | fact still in the cache |")
    print("|---|---:|---:|---:|---:|")
    for hay in texts:
        sel = [r for r in rows if r["haystack"] == hay]
        judged = lambda key: f"{sum(r[key] for r in sel)}/{len(sel)}" if eng is not None else "-"  # noqa: E731
        print(f"| {hay} | {sum(r['found'] for r in sel)}/{len(sel)} | {sum(r['look_alikes'] for r in sel)} | "
              f"{judged('answered')} | {judged('in_cache')} |")
    if args.out:
        from symphony.io import atomic_write_json

        atomic_write_json(Path(args.out), {"settings": {**vars(args), "length": length},
                                           "date": time.strftime("%Y-%m-%d"), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
