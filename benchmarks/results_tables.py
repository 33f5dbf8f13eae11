"""Print the README's result tables (markdown) from the JSON the eval commands wrote.

    python benchmarks/results_tables.py [RESULTS_DIR]      # default: results/
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def mb(n):
    return "-" if n is None else f"{n / 2**20:,.1f} MB"


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def oom(d):
    print("| method | context | peak RSS | cache | ingest tok/s | decode ms/tok | status |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in sorted(d["rows"], key=lambda r: (r["method"], r["context_len"])):
        fmt = lambda k, f: "-" if r.get(k) is None else f(r[k])  # noqa: E731
        extra = ""
        if r.get("projected_bytes") and r["status"] != "ok":
            extra = f" (projected {mb(r['projected_bytes'])})"
        if r.get("projected_s") and r["status"] != "ok":
            extra = f" (projected {r['projected_s']:,.0f} s)"
        print(f"| {r['method']} | {r['context_len']:,} | {mb(r.get('peak_mem_bytes'))} | {mb(r.get('cache_bytes'))} | "
              f"{fmt('ingest_tok_s', lambda v: f'{v:,.0f}')} | {fmt('decode_ms_per_tok', lambda v: f'{v:,.0f}')} | "
              f"{r['status']}{extra} |")


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


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    for title, path, fn in [("oom", "oom/oom.json", oom), ("needle", "needle/needle.json", needle),
                            ("needle without recall ledger", "needle_norecall/needle.json", needle),
                            ("ppl 8k", "ppl8k/ppl.json", ppl), ("ppl 32k", "ppl32k/ppl.json", ppl),
                            ("integrity", "integrity/integrity.json", integrity)]:
        d = load(root / path)
        if d is None:
            continue
        print(f"\n### {title}\n")
        fn(d)
    if list(root.glob("train/*")):
        print("\n### trained memories (smollm2-135m-cpu)\n")
        trained(root)
    if list(root.glob("train/recall_v1/*")):
        print("\n### trained memories, needle before the coverage recall (recall_v1)\n")
        trained(root, before_recall_fix=True)


if __name__ == "__main__":
    main()
