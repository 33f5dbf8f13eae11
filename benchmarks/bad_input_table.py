"""Write docs/BAD_INPUT.md: what a user sees for each kind of bad input or fault, taken from real runs.

    .venv/bin/python benchmarks/bad_input_table.py            # ~1 minute on the tiny preset

Each case runs the `symphony` command line (in-process) or, for resume points, the library call a resumed
phase makes, and records the exit code and the line printed. tests/test_bad_input.py and
tests/test_hardening_runs.py assert the same behaviour.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from click.testing import CliRunner  # noqa: E402

from symphony.cli.main import main  # noqa: E402
from symphony.errors import SymphonyError  # noqa: E402
from symphony.io import atomic_write_text  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "BAD_INPUT.md"


def shown(res) -> str:
    """The line the user is shown: the error line, else the first note on stderr."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    for prefix in ("error:", "Error:", "interrupted", "note:"):
        for line in lines:
            if line.startswith(prefix):
                return line
    return lines[-1] if lines else "(nothing)"


def fixtures(d: Path) -> dict[str, Path]:
    from symphony.models.tiny import byte_tokenizer, tiny_model

    f = {"doc": d / "doc.txt", "latin1": d / "latin1.txt", "blocker": d / "a-file", "list_yaml": d / "list.yaml",
         "latin1_yaml": d / "latin1.yaml", "gguf": d / "model.gguf", "tiny": d / "tiny", "results": d / "res"}
    f["doc"].write_text("The harbour master keeps the ledger of ships. " * 40)
    f["latin1"].write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 30)
    f["blocker"].write_text("a file, not a folder")
    f["list_yaml"].write_text("- model\n- cache\n")
    f["latin1_yaml"].write_bytes(b"model:\n  name: caf\xe9\n")
    f["gguf"].write_bytes(b"GGUF" + bytes(range(256)) * 4)
    tiny_model("tiny-llama", seed=0).save_pretrained(f["tiny"])
    byte_tokenizer().save_pretrained(f["tiny"])
    weights = f["tiny"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    f["results"].mkdir()
    (f["results"] / "needle.json").write_text("[]\n")
    return f


def cli_cases(f: dict[str, Path]) -> list[tuple[str, list, str | bytes | None]]:
    gen = ["generate", "-c", "tiny", "--file", f["doc"], "-p", "What is kept?"]
    return [
        ("cache budget past the model's context", gen + ["--set", "cache.window=4000"], None),
        ("`symphony info` with that budget", ["info", "-c", "tiny", "--set", "cache.window=4000"], None),
        ("empty prompt", ["generate", "-c", "tiny", "--file", f["doc"], "-p", ""], None),
        ("negative `--max-new-tokens`", gen + ["--max-new-tokens", "-1"], None),
        ("`--temperature -1`", gen + ["--temperature", "-1"], None),
        ("`--temperature nan`", gen + ["--temperature", "nan"], None),
        ("`--top-p 5`", gen + ["--top-p", "5"], None),
        ("`--file` that is not UTF-8 (runs; said once)", ["generate", "-c", "tiny", "--file", f["latin1"], "-p", "?",
                                                        "--max-new-tokens", "2"], None),
        ("chat `--script` that is not UTF-8", ["chat", "-c", "tiny", "--script", f["latin1"]], None),
        ("chat on stdin that is not UTF-8", ["chat", "-c", "tiny"], "hello\nqu\u00e9\n".encode("latin-1")),
        ("`demo --length 10`", ["demo", "-c", "tiny", "--length", "10"], None),
        ("unwritable `-o/--out`", ["eval", "needle", "-c", "tiny", "-o", f["blocker"] / "out"], None),
        ("unwritable `-r/--run-dir`", ["run-phase", "1", "-c", "tiny", "-r", f["blocker"] / "run"], None),
        ("results file of the wrong shape, `--resume`", ["eval", "needle", "-c", "tiny", "-o", f["results"],
                                                         "--resume", "--lengths", "1k"], None),
        ("`integrity --max-new-tokens -1`", ["eval", "integrity", "-c", "tiny", "--max-new-tokens", "-1"], None),
        ("YAML config that is a list", ["info", "-c", f["list_yaml"]], None),
        ("YAML config that is not UTF-8", ["info", "-c", f["latin1_yaml"]], None),
        ("`salience.novelty_table_bits=40`", ["info", "-c", "tiny", "--set", "salience.novelty_table_bits=40"], None),
        ("`calibration.tokens=0`", ["info", "-c", "tiny", "--set", "calibration.tokens=0"], None),
        ("`data.dev_samples=0`", ["info", "-c", "tiny", "--set", "data.dev_samples=0"], None),
        ("`train.phase4_steps=0`", ["info", "-c", "tiny", "--set", "train.phase4_steps=0"], None),
        ("corrupt `.gguf`", ["info", "--set", f"model.name={f['gguf']}"], None),
        ("truncated `model.safetensors`", ["generate", "--set", f"model.name={f['tiny']}", "--file", f["doc"],
                                           "-p", "?"], None),
        ("`pipeline` on a config with no memory", ["pipeline", "-c", "tiny", "--set", "memory.kind=none", "--set",
                                                   "memory.pointer=false", "-r", f["blocker"].parent / "run"], None),
    ]


def crafted_pickle_case(d: Path) -> str:
    """A resume point whose optimizer.pt is a pickle that would run code."""
    import torch

    from symphony.pipeline.loop import STATE_DIR, load_train_state, save_train_state

    model = torch.nn.Linear(2, 2)
    model.memory_adapter = torch.nn.Linear(1, 1)  # something adapter_state_dict would save; harmless if ignored
    opt = torch.optim.AdamW(model.parameters())
    out = d / "phase4"
    save_train_state(model, opt, out, 2, "fp", None)

    class Payload:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    torch.save({"optimizer": Payload(), "rng": torch.get_rng_state()}, out / STATE_DIR / "optimizer.pt")
    try:
        load_train_state(model, opt, out, "fp")
    except SymphonyError as e:
        return f"error: {e}"
    return "(loaded!)"


def main_() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        f = fixtures(d)
        for what, args, stdin in cli_cases(f):
            res = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
            line = shown(res).replace(tmp, "/tmp/…")
            rows.append((what, res.exit_code, "Traceback" in res.output, line))
        rows.append(("a run directory whose `train_state/optimizer.pt` is a crafted pickle (resume)", 2, False,
                     crafted_pickle_case(d).replace(tmp, "/tmp/…")))
    lines = ["# Bad input: what you see", "",
             "Generated by `benchmarks/bad_input_table.py` from real runs on the `tiny` preset; tests/test_bad_input.py",
             "and tests/test_hardening_runs.py assert the same behaviour. Exit code 2 = refused before or without",
             "losing work; 0 = ran, with a note.", "",
             "| input | exit | what the user sees |", "|---|---|---|"]
    for what, code, traceback, line in rows:
        cell = line.replace("|", "\\|") + (" **(traceback!)**" if traceback else "")
        lines.append(f"| {what} | {code} | `{cell}` |")
    atomic_write_text(OUT, "\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(rows)} cases)")


if __name__ == "__main__":
    main_()
