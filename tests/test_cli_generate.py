"""`symphony generate` as scripts use it: the document from standard input (`--file -`), JSON out (`--json`)."""
from __future__ import annotations

import json

from helpers import invoke

DOC = "The harbour master keeps the ledger of ships. " * 30


def run_json(*args, input=None) -> dict:
    res = invoke("generate", "-c", "tiny", "-p", "What is kept?", "--max-new-tokens", 3, "--json", *args, input=input)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_file_dash_reads_standard_input(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOC)
    from_file, from_stdin = run_json("--file", path), run_json("--file", "-", input=DOC)
    same = lambda out: {k: v for k, v in out.items() if k != "peak_bytes"}  # noqa: E731 - the process's peak
    assert same(from_stdin) == same(from_file)  # same document, same stream, same greedy answer
    assert from_stdin["tokens_seen"] > len(DOC.encode())  # the byte-level tiny tokenizer: one token per byte


def test_json_output_has_what_scripts_need():
    out = run_json("--file", "-", input=DOC)
    assert set(out) >= {"answer", "model", "policy", "tokens_seen", "cache_slots", "cache_bytes", "peak_bytes"}
    assert out["model"] == "tiny-llama" and out["policy"] == "symphony" and out["cache_bytes"] > 0


def test_undecodable_standard_input_is_read_with_a_note():
    res = invoke("generate", "-c", "tiny", "--file", "-", "-p", "?", "--max-new-tokens", 2,
                 input="caf\u00e9 ".encode("latin-1") * 20)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("not valid UTF-8") == 1
