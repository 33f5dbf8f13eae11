"""One stream to a million tokens: needles with look-alikes asked as the stream grows, memory and speed measured
along the way, each method in the same run.

    python benchmarks/long_stream.py --haystack manpages --lengths 128k,512k,1M --methods sinks,symphony \
        --out docs/results/long_stream.json                       # ~2 h a method on 2 idle CPU cores
    python benchmarks/long_stream.py -c tiny --lengths 2k,4k --memory-at 1k --out /tmp/ls.json   # a smoke run

A needle cell at 1M tokens costs a million tokens of streaming; three depths at three lengths would cost nine
streams. Here each method reads ONE stream of the longest length instead, with every cell's needles planted in it:
for each asked length L, three targets (at `--depths` of L) and, for each, `--distractors` look-alikes (the same
template, other keys, at random places before L). When the stream reaches L, each of L's questions is asked on a
copy of the stream (a new user turn after the text so far, as `symphony chat` with a document) and the answer is
checked; the stream then reads on. Every key is distinct in the whole stream, so a fact planted for another length
is one more look-alike, never a second answer. The haystack should not repeat (`manpages`: ~3M tokens).

At each checkpoint (`--memory-at` and every asked length) a row records: peak RSS so far (VmHWM of this method's
own process; one question is asked at the first checkpoint too, so every peak includes a question's copy of the
stream), the KV cache's bytes, ingest tokens/s since the previous checkpoint and the answers' decode ms/token.
Methods run one after the other, each in a fresh process; rows are written (atomically) as each checkpoint ends.
Measure speed on an idle machine only.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 8192  # tokens per ingest call, for the progress bar
ADJECTIVES = ["amber", "brisk", "crimson", "dusty", "eager", "frosty", "gentle", "hollow", "icy", "jolly", "keen",
              "lunar", "mellow", "noble", "olive", "proud", "quiet", "rustic", "silver", "tidal", "umber", "vivid",
              "windy", "young"]


def plan_needles(rng: random.Random, lengths: list[int], depths: list[float], distractors: int):
    """[(length, position, Needle, asked)]: per length, a target at each depth and its look-alikes before it ends;
    keys "<adjective> <noun>", all distinct."""
    from symphony.haystack import _KEYS, random_needle

    keys = [f"{a} {k}" for a in ADJECTIVES for k in _KEYS]
    rng.shuffle(keys)
    out = []
    for n in lengths:
        for d in depths:
            out.append((n, int(n * d / 100), random_needle(rng, "number", key=keys.pop()), True))
            for _ in range(distractors):
                out.append((n, rng.randrange(int(0.02 * n), int(0.95 * n)), random_needle(rng, "number", key=keys.pop()),
                            False))
    return out


def build_stream(tok, text: str, total: int, planted) -> tuple[list[int], list[int]]:
    """`total` tokens of `text` with the planted sentences inserted after a sentence or line end near their
    positions: (token ids, each planted sentence's start in them)."""
    from symphony.corpus import token_stream
    from symphony.haystack import _snap

    sentences = [tok(p[2].sentence, add_special_tokens=False).input_ids for p in planted]
    hay = token_stream(tok, text[:8 * total], total - sum(map(len, sentences)))  # ~4 characters a token
    ahead = sum(map(len, sentences)) + 40  # what the sentences before it and `_snap` may shift a place by, at most
    cuts = sorted((_snap(hay, max(0, min(p[1], len(hay)) - ahead), tok), i) for i, p in enumerate(planted))
    ids, starts, prev = [], [0] * len(planted), 0
    for cut, i in cuts:
        ids += hay[prev:cut]
        starts[i] = len(ids)
        ids += sentences[i]
        prev = cut
    return ids + hay[prev:], starts


def run_method(args, method: str, lengths: list[int], memory_at: list[int], depths: list[float]) -> list[dict]:
    """Stream once through `method`, asking each length's questions when the stream reaches it."""
    import torch
    from tqdm import tqdm

    from symphony.config import load_config
    from symphony.corpus import load_text
    from symphony.evaluation.oom_worker import reset_rss_peak, rss_peak_bytes
    from symphony.haystack import contains_answer
    from symphony.runtime import chat
    from symphony.runtime.engine import engine_from_config

    cfg = load_config(args.config, list(args.set))
    eng = engine_from_config(cfg, policy=method, progress=False)
    tok = eng.tokenizer
    planted = plan_needles(random.Random(args.seed), lengths, depths, args.distractors)
    ids, starts = build_stream(tok, load_text(args.haystack), max(lengths), planted)
    gc.collect()
    reset_rss_peak()  # the tokenisation's transient is not the stream's memory
    before, after = chat.chat_format(eng).first_user
    stream = eng.new_stream()
    eng.ingest(stream, eng.encode(before))
    rows, done = [], 0
    bar = tqdm(total=len(ids), desc=method, unit="tok", unit_scale=True, file=sys.stderr)
    for point in sorted(set(lengths) | set(memory_at)):
        t0 = time.perf_counter()
        for a in range(done, point, CHUNK):
            eng.ingest(stream, torch.tensor(ids[a:min(point, a + CHUNK)]))
            bar.update(min(point, a + CHUNK) - a)
        ingest_s, ingest_tokens, done = time.perf_counter() - t0, point - done, point
        asked = [(p, s) for p, s in zip(planted, starts) if p[0] == point and p[3]]
        answers, decode_s, decoded = [], 0.0, 0
        for (n, _, needle, _), start in asked or [(planted[0], starts[0])]:  # no cell here: one question for memory
            copy_ = copy.deepcopy(stream)
            chat.ask(eng, copy_, "\n\n" + needle.question, after)
            t0 = time.perf_counter()
            out = eng.decode(copy_, args.max_new_tokens)
            decode_s, decoded = decode_s + time.perf_counter() - t0, decoded + len(out)
            reply = tok.decode(out, skip_special_tokens=True).strip()
            if asked:
                answers.append({"depth": round(100 * start / n, 1), "key": needle.key, "expected": needle.value,
                                "generated": reply, "correct": contains_answer(reply, needle.value),
                                "reread": tok.decode(copy_.reread)[:300]})
            del copy_
            gc.collect()
        rows.append({"method": method, "tokens": point, "peak_rss_bytes": rss_peak_bytes(), "cache_bytes": stream.nbytes(),
                     "archive_bytes": stream.recall.nbytes() if stream.recall is not None else 0,
                     "ingest_tok_s": round(ingest_tokens / ingest_s, 1),
                     "decode_ms_per_tok": round(1000 * decode_s / max(1, decoded), 2),
                     "load_1m": round(os.getloadavg()[0], 2), "answers": answers})
        print(json.dumps(rows[-1]), flush=True)
    bar.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="smollm2-135m")
    ap.add_argument("-s", "--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--haystack", default="manpages", help="builtin, manpages or a text file (should not repeat)")
    ap.add_argument("--lengths", default="128k,512k,1M", help="stream lengths where needles are asked")
    ap.add_argument("--memory-at", default="4k", help="more checkpoints, for memory and speed only")
    ap.add_argument("--depths", default="10,50,90", help="where each length's targets sit, in %% of it")
    ap.add_argument("--distractors", type=int, default=3)
    ap.add_argument("--methods", default="sinks,symphony")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "results" / "long_stream.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from symphony.errors import SymphonyError
    from symphony.evaluation.methods import parse_lengths, parse_methods
    from symphony.io import atomic_write_json

    try:
        methods = parse_methods(args.methods)
        lengths, memory_at = parse_lengths(args.lengths), parse_lengths(args.memory_at)
        depths = [float(d) for d in args.depths.split(",")]
    except (ValueError, SymphonyError) as e:
        print(f"long_stream: {e}", file=sys.stderr)
        return 2
    if "full" in methods or not all(0 < d < 100 for d in depths) or not 0 <= args.distractors <= 7:
        print("long_stream: methods are sinks and symphony (full cannot stream this far), depths lie in (0, 100), "
              "distractors in 0..7", file=sys.stderr)
        return 2
    if args.worker:  # prints each checkpoint's row as a JSON line
        run_method(args, methods[0], lengths, memory_at, depths)
        return 0
    out = Path(args.out)
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
              "date": time.strftime("%Y-%m-%d"), "lengths": lengths, "memory_at": memory_at, "rows": []}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    for method in methods:  # a fresh process each: its own peak RSS
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--methods", method, "--worker"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for line in proc.stdout:
            if line.startswith("{"):
                result["rows"].append(json.loads(line))
                atomic_write_json(out, result)
                row = result["rows"][-1]
                print(f"{method} {row['tokens'] // 1024}k: peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, cache "
                      f"{row['cache_bytes'] / 2**20:.1f} MiB, ingest {row['ingest_tok_s']} tok/s, decode "
                      f"{row['decode_ms_per_tok']} ms/tok, needles {sum(a['correct'] for a in row['answers'])}/"
                      f"{len(row['answers'])}", flush=True)
        if proc.wait() != 0:
            print(f"long_stream: the {method} stream failed (exit {proc.returncode}); rows so far are in {out}",
                  file=sys.stderr)
            return 1
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
