"""Write docs/RESULTS.md, the measured results, from the JSON the eval commands wrote under docs/results/.

    python benchmarks/results_tables.py                     # docs/results -> docs/RESULTS.md
    python benchmarks/results_tables.py RESULTS_DIR --print # tables of another results folder, to stdout

Every table is computed from the JSON; the prose beside each says how it was measured (the command) and what
it shows. Speed figures (tokens/s, ms/token) are reported only where the run was idle: the speed suite, and the
long-stream checkpoints whose recorded load average says no other job shared the 2 CPU cores.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


IDLE_LOAD = 2.6  # 1-minute load average of a 2-core machine running one 2-thread job alone


def mb(n):
    return "-" if n is None else f"{n / 2**20:,.1f} MB"


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def oom(d):
    """Memory only: the speed columns of the stored runs were measured under contention (see the docstring)."""
    print("| method | context | peak RSS | cache | status |")
    print("|---|---:|---:|---:|---|")
    for r in sorted(d["rows"], key=lambda r: (r["method"], r["context_len"])):
        extra = ""
        if r.get("projected_bytes") and r["status"] != "ok":
            extra = f" (projected {mb(r['projected_bytes'])})"
        if r.get("projected_s") and r["status"] != "ok":
            extra = " (projected over the time limit)"
        print(f"| {r['method']} | {r['context_len']:,} | {mb(r.get('peak_mem_bytes'))} | {mb(r.get('cache_bytes'))} | "
              f"{r['status']}{extra} |")
    for m in sorted({r["method"] for r in d["rows"]}):
        ok = sorted((r for r in d["rows"] if r["method"] == m and r["status"] == "ok"), key=lambda r: r["context_len"])
        if len(ok) > 1:
            a, b = ok[0], ok[-1]
            same = len({r["cache_bytes"] for r in ok}) == 1
            print(f"\n- `{m}`: cache {'identical at every length' if same else 'grows with the length'}; peak "
                  f"{mb(a['peak_mem_bytes'])} at {a['context_len']:,} -> {mb(b['peak_mem_bytes'])} at "
                  f"{b['context_len']:,} ({b['peak_mem_bytes'] / a['peak_mem_bytes'] - 1:+.1%})", end="")
    print()


def speed(d):
    print("| method | context | ingest tok/s: median (min-max) | decode ms/token: median (min-max) |")
    print("|---|---:|---:|---:|")
    for r in sorted(d["rows"], key=lambda r: (r["context_len"], r["method"])):
        i, t = r["ingest_tok_s"], r["decode_ms_per_tok"]
        print(f"| {r['method']} | {r['context_len']:,} | {i['median']:,.0f} ({i['min']:,.0f}-{i['max']:,.0f}) | "
              f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) |")
    print()
    for q in d["ratios"]:
        name = "StreamingLLM (sinks)" if q["vs"] == "sinks" else "full attention"
        print(f"- Symphony / {name} at {q['context_len']:,} tokens: ingest speed x{q['ingest']:.2f}, "
              f"decode time per token x{q['decode']:.2f}")


def long_stream(d):
    """Speed columns only for checkpoints that saw no other jobs (a 1-minute load average at most the cores this
    run uses)."""
    print("| method | tokens read | needles found (3 look-alikes each) | peak RSS | KV cache | archive | ingest tok/s | "
          "decode ms/token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    hidden = 0
    for r in d["rows"]:
        found = f"{sum(a['correct'] for a in r['answers'])}/{len(r['answers'])}" if r["answers"] else "-"
        idle = r.get("load_1m", IDLE_LOAD + 1) <= IDLE_LOAD
        hidden += not idle
        speed = f"{r['ingest_tok_s']:,.0f} | {r['decode_ms_per_tok']:.1f}" if idle else "- | -"
        print(f"| {r['method']} | {r['tokens']:,} | {found} | {mb(r['peak_rss_bytes'])} | {mb(r['cache_bytes'])} | "
              f"{mb(r['archive_bytes'])} | {speed} |")
    for m in dict.fromkeys(r["method"] for r in d["rows"]):
        mine = [r for r in d["rows"] if r["method"] == m]
        a, b = mine[0], mine[-1]
        print(f"\n- `{m}`: peak RSS at {b['tokens']:,} tokens / at {a['tokens']:,}: x{b['peak_rss_bytes'] / a['peak_rss_bytes']:.3f}; "
              f"KV cache bytes {'identical at every checkpoint' if len({r['cache_bytes'] for r in mine}) == 1 else 'vary'}",
              end="")
    if hidden:
        print(f"\n- Speed not shown for {hidden} checkpoint(s): other jobs shared the cores then.", end="")
    print()


def memory_modules(d):
    print("| memory | tokens | state bytes | all finite |")
    print("|---|---:|---:|---|")
    for r in d["rows"]:
        print(f"| {r['memory']} | {r['tokens']:,} | {r['state_bytes']:,} | {r['finite']} |")


def titans_extensions(d):
    print("| variant | A before B | A after B | forgetting | B | A with distractors |")
    print("|---|---:|---:|---:|---:|---:|")
    keys = ("a_before", "a_after", "forgetting", "b_after", "a_after_distractors")
    for m in d["summary"]:  # each value: [mean, spread] over the seeds
        print(f"| {m['variant']} | " + " | ".join(f"{m[k][0]:.3f}" for k in keys) + " |")


def retriever_check(d):
    rows = d["rows"]
    print("| haystack | question | facts re-read whole, with the retriever | lexical recall alone |")
    print("|---|---|---:|---:|")
    for hay in dict.fromkeys(r["haystack"] for r in rows):
        for q in ("named", "unnamed"):
            got = {m: [r["found"] for r in rows if (r["haystack"], r["question"], r["mode"]) == (hay, q, m)]
                   for m in ("retriever", "lexical")}
            print(f"| {hay} | {q} | {sum(got['retriever'])}/{len(got['retriever'])} | "
                  f"{sum(got['lexical'])}/{len(got['lexical'])} |")


def recall_phrasing(d) -> None:
    print("| haystack | found whole | look-alikes re-read | answered exactly | fact still in the cache |")
    print("|---|---:|---:|---:|---:|")
    for hay in dict.fromkeys(r["haystack"] for r in d["rows"]):
        sel = [r for r in d["rows"] if r["haystack"] == hay]
        print(f"| {hay} | {sum(r['found'] for r in sel)}/{len(sel)} | {sum(r['look_alikes'] for r in sel)} | "
              f"{sum(r['answered'] for r in sel)}/{len(sel)} | {sum(r['in_cache'] for r in sel)}/{len(sel)} |")
    missed = [r for r in d["rows"] if not r["found"]]
    if missed:
        print("\nNot re-read whole: " + "; ".join(f"{r['haystack']} \"{r['question']}\" ({r['fact']})"
                                                  for r in missed))


def needle(d):
    lengths = sorted({r["context_len"] for r in d["rows"]})
    print("| method | " + " | ".join(f"{n // 1024}k" for n in lengths) + " | all |")
    print("|---|" + "---:|" * (len(lengths) + 1))
    for m, s in d["summary"].items():
        cells = []
        for n in lengths:
            got = [r for r in d["rows"] if r["method"] == m and r["context_len"] == n and r.get("correct") is not None]
            cells.append(f"{sum(r['correct'] for r in got)}/{len(got)}" if got else "not run")
        print(f"| {m} | " + " | ".join(cells) + f" | {s['correct']}/{s['trials']} |")


def ppl(d):
    print("| method | tokens | budget (slots) | NLL | perplexity |")
    print("|---|---:|---:|---:|---:|")
    for r in d["rows"]:
        print(f"| {r['method']} | {r['tokens']:,} | {r['budget']:,} | {r['nll']:.4f} | {r['ppl']:.3f} |")


def integrity(d):
    s = d["summary"]
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    print("| category | base correct | Symphony correct | Symphony after long prefix | same output as base |")
    print("|---|---:|---:|---:|---:|")
    for cat, v in s["by_category"].items():
        print(f"| {cat} | {pct(v['base_ok'])} | {pct(v['symphony_ok'])} | {pct(v['symphony_long_ok'])} | {pct(v['same_output'])} |")
    print(f"| **all ({s['checks']} checks)** | {pct(s['base_ok'])} | {pct(s['symphony_ok'])} | "
          f"{pct(s['symphony_long_ok'])} | {pct(s['same_output'])} |")


def trained_label(method: str, checkpoint: str | None, copy_head: bool = True) -> str:
    """The row a trained-memories result belongs to: the baselines by method, trained runs by run directory."""
    if not checkpoint:
        return "sinks (StreamingLLM)" if method == "sinks" else ("full attention" if method == "full"
                                                               else "symphony, untrained")
    run = Path(checkpoint).parent.name if Path(checkpoint).name == "final" else Path(checkpoint).name
    return f"symphony + trained {run.removeprefix('smollm2-cpu-')}" + ("" if copy_head else ", copy head off")


def trained(root: Path, before_recall_fix: bool = False) -> None:
    """One table over every eval under root/train (results/train/<name>/*.json or docs/results/train/*.json):
    needle (plain and with distractors) by length, perplexity by tokens, rows by method/checkpoint, columns
    split by cache budget. Needle runs made before the recall ledger's coverage search sit in
    train/recall_v1/: `before_recall_fix` tables them alone; otherwise only their sinks rows count (sinks has
    no recall ledger, so the change did not touch them) and their symphony rows are superseded."""
    old = sorted(root.glob("train/recall_v1/*/needle.json")) + sorted(root.glob("train/recall_v1/*.json"))
    if before_recall_fix:
        files, only_sinks = old, []
    else:
        files = sorted(root.glob("train/*/needle.json")) + sorted(root.glob("train/*/ppl.json")) + sorted(
            root.glob("train/*.json"))
        files, only_sinks = files + old, old
    cells: dict[tuple[str, str], list] = {}
    for f in files:
        d = load(f)
        st = d["settings"]
        budget = sum(st["cache"][k] for k in ("sinks", "ledger", "window"))
        for r in d["rows"]:
            if f in only_sinks and r["method"] != "sinks":
                continue
            label = trained_label(r["method"], st.get("checkpoint") if r["method"] == "symphony" else None,
                                  st.get("copy_head", True))
            if d["suite"] == "needle":
                if r.get("correct") is None:
                    continue
                mk = f" + {st['distractors']} distr." if st.get("distractors") else ""
                col = f"needle{mk}, {r['context_len'] // 1024}k" + ("" if budget == 512 else f" ({budget} slots)")
                cells.setdefault((label, col), []).append(bool(r["correct"]))
            elif r.get("ppl") is not None:
                col = f"ppl {r['tokens'] // 1024}k" + ("" if budget == 512 or r["method"] == "full" else f" ({budget} slots)")
                cells[(label, col)] = [r["ppl"]]
    def order(col: str):  # needle before ppl, plain before distractors, 512 slots before bigger, by length
        length = int(col.replace(",", " ").split("k")[0].split()[-1])
        return col.startswith("ppl"), "distr" in col, "slots" in col, length, col
    cols = sorted({c for _, c in cells}, key=order)
    rows = sorted({lab for lab, _ in cells}, key=lambda s: (not s.startswith("full"), not s.startswith("sinks"),
                                                            s.startswith("symphony +"), s))
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for lab in rows:
        out = []
        for c in cols:
            v = cells.get((lab, c))
            if v is None:
                out.append("")
            elif c.startswith("ppl"):
                out.append(f"{v[0]:.3f}" if v[0] < 1e4 else f"{v[0]:.1e}")
            else:
                out.append(f"{sum(v)}/{len(v)}")
        print(f"| {lab} | " + " | ".join(out) + " |")


SECTIONS = [  # (title, JSON under the results folder, table, how it was measured and what it shows)
    ("Memory vs context length", "oom.json", oom,
     "`symphony eval oom --lengths 4k,16k,64k` on the default preset (2,052 slots): each cell a fresh worker process "
     "(peak RSS = its VmHWM, weights included). `full` at 64k was projected past the time limit, not run."),
    ("Speed", "speed/speed.json", speed,
     "`python benchmarks/speed.py --lengths 8k,32k --repeats 3` on the idle 2-core machine (one process at a time; "
     "it refuses to start under load): each run a fresh `symphony eval oom` worker, methods interleaved, the default "
     "2,052-slot budget for sinks and symphony; `full` at 8k only (quadratic)."),
    ("Needle in a haystack", "needle.json", needle,
     "`symphony eval needle --lengths 2k,8k,32k --depths 10,50,90 --methods full,sinks,symphony`: a 7-digit number "
     "planted in Python's documentation, one needle per cell, the same for every method. `full` at 32k is four "
     "times past SmolLM2's trained window and answers garbage."),
    ("Needle, Symphony with the current recall", "needle_symphony_current_recall.json", needle,
     "The Symphony row of the grid above re-run after the recall changes (coverage search, window candidates)."),
    ("Needle, KV ledger only (no recall archive)", "needle_norecall_needle.json", needle,
     "`--set cache.recall_tokens=0` at 8k: the KV ledger alone kept all three needles there."),
    ("Perplexity, 8k tokens", "ppl8k_ppl.json", ppl,
     "`symphony eval ppl --max-tokens 8192`: Python's documentation, the same tokens for every method."),
    ("Perplexity, 32k tokens", "ppl32k_ppl.json", ppl,
     "`symphony eval ppl --max-tokens 32768`: `full` is a strided sliding window of the model's 8,192-token context."),
    ("Functional integrity", "integrity.json", integrity,
     "`symphony eval integrity`: 32 checkable prompts, greedy, on the base model and through Symphony, at short "
     "context and after a 4,096-token unrelated prefix. Short-context outputs equal the base model's on every prompt."),
    ("One stream to a million tokens", "long_stream_1m.json", long_stream,
     "`python benchmarks/long_stream.py --haystack manpages --lengths 128k,512k,1M --memory-at 4k,64k,256k "
     "--methods symphony` (2026-12-03, 1 h 50 min on an idle machine but for the 64k and 128k checkpoints): one stream of this machine's man pages (non-repeating) with every length's needles "
     "planted in it (targets at 10/50/90% of the length, each with three look-alikes of other keys, every key "
     "distinct); at each length its three questions are asked on copies of the stream. Peak RSS is the method's own "
     "process from the start of streaming, a question's copy of the stream included. The StreamingLLM baseline at "
     "these lengths is still to run (its 64k run is the next table)."),
    ("One stream to 64k tokens, both methods", "long_stream.json", long_stream,
     "`python benchmarks/long_stream.py --haystack manpages --lengths 32k,64k --memory-at 4k --methods sinks,symphony`: "
     "as above, both methods on the same stream."),
    ("Memory modules to one million tokens", "memory_throughput_1m.json", memory_modules,
     "`python benchmarks/memory_throughput.py --tokens 4096,65536,1048576`: FHRR and Titans state bytes are the same "
     "at 4k, 64k and 1M tokens, every value finite."),
    ("Recall of facts worded unlike the question: the HEP-DNA retriever", "retriever_check.json", retriever_check,
     "`python benchmarks/retriever_check.py --retriever RUN/phase5/retriever.safetensors` after `symphony pipeline -c "
     "smollm2-135m-retriever --to 5 -r RUN` (the retriever alone: 64 bytes a span, layer 6, trained on 32 paraphrase "
     "templates, calibrated on 8 others): each of the eval's 13 paraphrase templates (held out) planted with 3 facts "
     "of other templates in 4,096 tokens, the recall search run with and without the retriever on the same stream. "
     "*named*: RULER's paraphrase question (shares the name with the fact); *unnamed*: the same without the name "
     "(no content word shared). No answer is generated: this is what recall hands the model. In 18 of the 26 streams "
     "the ledger still held the fact's tokens as KV; recall searches those slots too."),
    ("Recall of other fact styles and wordings", "recall_phrasing.json", recall_phrasing,
     "`python benchmarks/recall_phrasing_check.py --haystacks builtin,manpages --length 16k`: twelve fact styles that "
     "none of the suites use (a code assignment, a table row, an ISBN, a password, a birth year, ...), each asked by "
     "a question that shares only the key's name with it, each planted with three look-alikes (same template, other "
     "keys); one 16k-token document per haystack, streamed once through the default cache, every question asked "
     "on a copy of the stream. *found whole*: the asked fact's sentence re-read; *answered exactly*: the reply "
     "holds the value."),
    ("Titans extensions", "titans_interference.json", titans_extensions,
     "`python benchmarks/titans_interference.py`: symplectic gating and manifold paging (off by default) on an "
     "interference benchmark (recall loss; 1.0 = answers 0). Neither helped: task A is lost after B in every variant."),
]

PLOTS = {"oom.json": ("oom.png",), "needle.json": ("needle_symphony.png", "needle_sinks.png", "needle_full.png"),
         "ppl8k_ppl.json": ("ppl8k_ppl.png",), "ppl32k_ppl.json": ("ppl32k_ppl.png",)}

HEADER = """# Measured results

Generated by `python benchmarks/results_tables.py` from the JSON under `docs/results/` (each run's settings are
in its file). Model: SmolLM2-135M-Instruct, fp32, trained context 8,192 tokens, 45 KB of KV per token, on a
2-core CPU; default preset: 4 sinks + 512 ledger + 1,536 window = 2,052 slots (90 MB). Baselines ran in the same
command on the same inputs: `full` (plain `DynamicCache`) and `sinks` (StreamingLLM at the same slot budget).

**Read with care.** The needle grids below use the built-in haystack and one needle template. The RULER-style
section measures recall on two haystacks (Python's documentation and this machine's man pages) with RULER's
templates and paraphrased questions; where it falls short it says so. The only speed figures are those of the
Speed section and the long-stream checkpoints taken on an idle machine; the tokens/s stored in the other runs'
JSON were taken while other jobs shared the cores.
"""

TRAINED = """Trained memories (`benchmarks/training_results.sh`; smollm2-135m-cpu: Titans or FHRR on the last 2 layers +
pointer heads, 96 samples of 1-1.5k tokens, a 512-slot cache unless a column says otherwise; depths 10/50/90,
one trial per cell; `+ 3 distr.` plants three look-alike facts with other keys). The needle is carried by the
recall archive (untrained Symphony scores as well as trained); Titans lowers perplexity 2-5% over the same
untrained engine; FHRR ~0.5%; the copy head as trained costs perplexity and adds no recall.
"""


RULER_COLUMNS = [  # (step folder, method, column title)
    ("4k", "full", "full 4k"), ("4k", "sinks", "sinks 4k"), ("4k", "symphony", "Symphony 4k"),
    ("16k", "symphony", "Symphony 16k"), ("16k_sinks", "sinks", "sinks 16k"), ("32k", "symphony", "Symphony 32k"),
    ("32k_sinks", "sinks", "sinks 32k")]

RULER = """`benchmarks/ruler_suite.sh HAYSTACK` (= `symphony eval ruler --haystack HAYSTACK --lengths L --methods M
--samples S`, steps listed in the script): RULER's tasks (niah single/multi-key/multi-value/multi-query, variable
tracking) and NoLiMa-style paraphrased facts, scored with RULER's `string_match_all` (% of the references in the
reply; mean over samples, the sample count in brackets). The default 2,052-slot cache; `full` at 4k is the
reference a small model can reach with everything in view. *Re-read* counts the Symphony samples whose every
reference's planted sentence recall brought back whole: where it is full and the score is not, the fact was in
front of the question and the 135M model answered wrong."""


def ruler(root: Path) -> None:
    from symphony.evaluation.ruler_tasks import TASKS

    order = {t: i for i, t in enumerate(TASKS)}
    done: dict[str, set[str]] = {}
    for hay in sorted((p for p in (root / "ruler").iterdir() if p.is_dir()), key=lambda p: p.name != "builtin"):
        rows = [dict(r, step=step.name) for step in sorted(hay.iterdir()) if (step / "ruler.json").is_file()
                for r in load(step / "ruler.json")["rows"] if r.get("status") == "ok"]
        if not rows:
            continue
        tasks = sorted(dict.fromkeys(r["task"] for r in rows), key=lambda t: order.get(t, len(order)))
        done[hay.name] = set(tasks)
        cols = [c for c in RULER_COLUMNS if any(r["step"] == c[0] and r["method"] == c[1] for r in rows)]
        print(f"\n**Haystack: {hay.name}**\n")
        reread_steps = [st for st in ("16k", "32k") if any(r["step"] == st and r["method"] == "symphony" for r in rows)]
        print("| task | " + " | ".join(c[2] for c in cols) + f" | re-read whole, Symphony {' / '.join(reread_steps)} |")
        print("|---|" + "---:|" * (len(cols) + 1))
        for t in tasks:
            cells = []
            for step, method, _ in cols:
                got = [r["score"] for r in rows if r["task"] == t and r["step"] == step and r["method"] == method]
                cells.append(f"{sum(got) / len(got):.0f} ({len(got)})" if got else "")
            whole = []
            for st in reread_steps:
                sym = [r for r in rows if r["task"] == t and r["step"] == st and r["method"] == "symphony"]
                n = sum(r.get("facts_reread", 0) == len(r["references"]) for r in sym)
                whole.append(f"{n}/{len(sym)}" if sym else "-")
            print(f"| {t} | " + " | ".join(cells) + f" | {' / '.join(whole)} |")
        elsewhere = [t for t in done.get("builtin", ()) if t not in done[hay.name] and TASKS[t].haystack != "essay"]
        if hay.name != "builtin" and elsewhere:
            print(f"\n{', '.join(sorted(elsewhere, key=order.get))}: not run here; they read RULER's noise text or "
                  "needles only, never the haystack, so their inputs are those of the builtin table.")

        def mean(t, step, method):
            got = [r["score"] for r in rows if r["task"] == t and r["step"] == step and r["method"] == method]
            return sum(got) / len(got) if got else None

        for step in ("16k", "32k"):
            pairs = [(t, mean(t, step, "symphony"), mean(t, "4k", "full")) for t in tasks]
            pairs = [(t, a, b) for t, a, b in pairs if a is not None and b is not None]
            if pairs:
                below = [f"{t} ({a:.0f} vs {b:.0f})" for t, a, b in pairs if a < b]
                print(f"\nSymphony {step} below full attention at 4k on: {', '.join(below) or 'no task'} "
                      f"({len(pairs)} tasks compared).")
        nocopy = [r for r in rows if r["step"] == "16k_nocopy"]
        if nocopy:
            key = lambda r: (r["task"], r["sample"])  # noqa: E731
            with_copy = {key(r): r for r in rows if r["step"] == "16k" and r["method"] == "symphony"}
            pairs = [(with_copy[key(r)], r) for r in nocopy if key(r) in with_copy]
            print(f"\nExact copy rule (`cache.recall_copy`), Symphony 16k, the same {len(pairs)} samples of "
                  f"{', '.join(dict.fromkeys(r['task'] for r in nocopy))}: exact answers "
                  f"{sum(bool(a['exact']) for a, _ in pairs)}/{len(pairs)} with it, "
                  f"{sum(bool(b['exact']) for _, b in pairs)}/{len(pairs)} without.")
        kept = [r for r in rows if r.get("kept_from")]
        if kept:
            where = ", ".join(sorted({f"{r['step']} {r['method']}" for r in kept}))
            print(f"\n{len(kept)} rows ({where}) were kept from the run of commit "
                  f"{', '.join(sorted({r['kept_from'] for r in kept}))}, which had shorter answer budgets (16-64 "
                  "tokens) and an earlier copy rule that these rows do not use (no recall, or the rule off): "
                  "only rows whose reply had ended before that budget, so the same inputs and greedy decoding "
                  "give the same reply.")


NEEDLE_DISTRACTORS = """`symphony eval needle --haystack HAYSTACK --distractors 3 --lengths L --depths 10,50,90
--methods symphony`: a 7-digit number planted at each depth with three look-alike needles (same template, other
keys) elsewhere in the haystack; the answer counts only if it is the asked key's number. The goal is 9/9 at 32k and
64k on each haystack; the tables show the cells run so far (a haystack without a table: not run yet)."""


def needle_distractors(root: Path) -> None:
    for path in sorted((root / "needle_distractors").glob("*/needle.json"), key=lambda p: p.parent.name != "builtin"):
        print(f"\n**Haystack: {path.parent.name}**\n")
        needle(load(path))
        wrong = [r for r in load(path)["rows"] if r.get("correct") is False]
        for r in wrong:
            print(f"\n- missed: {r['context_len'] // 1024}k, depth {r.get('depth')}: answered "
                  f"{r.get('generated', '')!r} (expected {r.get('expected')})")


RULER_CEILING = """`python benchmarks/ruler_ceiling.py --tasks niah_multiquery,niah_multivalue,vt
--haystacks builtin,manpages --samples 6 --length 16k`: the same samples as `symphony eval ruler` at 16k (same
generator and seed), answered by the model with full attention after what perfect recall would hand it: the last
1,536 tokens of the context, then every sentence that holds a reference, one per line, then the question. This is
the ceiling Symphony's recall cannot lift: below 100, the 135M model fails with every fact in plain view."""


def ruler_ceiling(d) -> None:
    print("| haystack | task | mean score | samples with every reference |")
    print("|---|---|---:|---:|")
    for hay in dict.fromkeys(r["haystack"] for r in d["rows"]):
        for task in dict.fromkeys(r["task"] for r in d["rows"]):
            got = [r["score"] for r in d["rows"] if r["haystack"] == hay and r["task"] == task]
            if got:
                print(f"| {hay} | {task} | {sum(got) / len(got):.0f} | {sum(s == 100 for s in got)}/{len(got)} |")


def render(root: Path) -> str:
    import contextlib
    import io

    parts = [HEADER]
    for title, name, table, prose in SECTIONS:
        d = load(root / name)
        if d is None:
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            table(d)
        images = " ".join(f"![{png}](results/{png})" for png in PLOTS.get(name, ()) if (root / png).is_file())
        parts.append(f"## {title}\n\n{prose}\n\n{buf.getvalue().rstrip()}\n" + (f"\n{images}\n" if images else ""))
    if list(root.glob("needle_distractors/*/needle.json")):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            needle_distractors(root)
        parts.append(f"## Needle with three look-alikes, two haystacks\n\n{NEEDLE_DISTRACTORS}\n"
                     f"{buf.getvalue().rstrip()}\n")
    if (root / "ruler").is_dir():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ruler(root)
        images = " ".join(f"![{p.parent.parent.name} {p.parent.name}](results/{p.relative_to(root)})"
                          for p in sorted((root / "ruler").glob("*/*/ruler.png")) if p.parent.name in ("4k", "16k"))
        parts.append(f"## Recall: RULER-style tasks\n\n{RULER}\n{buf.getvalue().rstrip()}\n\n{images}\n")
    ceiling = load(root / "ruler_ceiling.json")
    if ceiling is not None:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ruler_ceiling(ceiling)
        parts.append(f"## RULER with perfect recall: what the model itself can do\n\n{RULER_CEILING}\n\n"
                     f"{buf.getvalue().rstrip()}\n")
    if list(root.glob("train/*")):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            trained(root)
        parts.append(f"## Trained memories\n\n{TRAINED}\n{buf.getvalue().rstrip()}\n")
    return "\n".join(parts)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "docs" / "results"
    text = render(root)
    if "--print" in sys.argv:
        print(text)
        return
    out = root.parent / "RESULTS.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
