"""`symphony eval needle`: the grid end to end on the tiny model, resume, memory limits, scoring, distractors."""
from __future__ import annotations

import functools
import json
import random
import re

import pytest
from click.testing import CliRunner

import helpers
import symphony.evaluation.needle as needle_eval
from symphony.cli.main import main
from symphony.evaluation.limits import projected_bytes
from symphony.evaluation.needle import cell_input, make_needles, parse_depths, summarize
from symphony.models.info import kv_bytes_per_token
from symphony.haystack import contains_answer

invoke = functools.partial(helpers.invoke, catch_exceptions=False)  # errors raise


BASE = ["eval", "needle", "-c", "tiny", "--depths", "0,50"]
KEY_FIELDS = ("method", "context_len", "depth", "trial")


@pytest.fixture
def trials(monkeypatch):
    """Counts engine runs; `symphony` answers from an oracle that reads the haystack (so the summary has
    right answers to count), every other method answers with the model's real (random) generation."""
    calls = []
    real = needle_eval.run_trial

    def counted(engine, ids, question, max_new_tokens):
        calls.append((engine.policy, len(ids), question))
        generated = real(engine, ids, question, max_new_tokens)
        if engine.policy == "symphony":
            key = re.search(r"for the (\w+)\?", question).group(1)
            text = engine.tokenizer.decode(ids)
            found = re.findall(rf"The secret number for the {key} is (\d+)\.", text)
            assert len(found) == 1, "the question's key names exactly one needle in the haystack"
            return f"The number is {found[0]}."
        return generated

    monkeypatch.setattr(needle_eval, "run_trial", counted)
    return calls


def load(out):
    return json.loads((out / "needle.json").read_text())


def check_summary(data):
    """Summary numbers recomputed from the rows."""
    rows = data["rows"]
    assert data["summary"] == summarize(rows)["summary"]
    for method, s in data["summary"].items():
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        assert s["trials"] == len(ok)
        assert s["correct"] == sum(r["correct"] for r in ok)
        assert s["accuracy"] == (pytest.approx(s["correct"] / len(ok)) if ok else None)
        assert s["over_limit"] == sum(r["method"] == method and r["status"] == "over_limit" for r in rows)
        for n, acc in s["by_length"].items():
            here = [r["correct"] for r in ok if r["context_len"] == int(n)]
            assert acc == (pytest.approx(sum(here) / len(here)) if here else None)
        for d, acc in s["by_depth"].items():
            here = [r["correct"] for r in ok if str(r["depth"]) == d]
            assert acc == (pytest.approx(sum(here) / len(here)) if here else None)


def test_needle_grid_end_to_end(tmp_path, trials):
    out = tmp_path / "needle"
    res = invoke(BASE + ["--lengths", "256,512", "--methods", "sinks,symphony", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = load(out)
    rows = data["rows"]
    assert len(rows) == len(trials) == 2 * 2 * 2
    for r in rows:
        assert set(r) >= {"method", "context_len", "depth", "trial", "expected", "generated", "correct", "seconds"}
        assert r["status"] == "ok" and isinstance(r["correct"], bool) and r["seconds"] > 0
        assert r["correct"] == contains_answer(r["generated"], r["expected"])
        assert re.fullmatch(r"\d{7}", r["expected"])
    assert {(r["context_len"], r["depth"]) for r in rows} == {(256, 0), (256, 50), (512, 0), (512, 50)}
    assert len({tuple(r[k] for k in KEY_FIELDS) for r in rows}) == len(rows)
    # the same cell asks every method about the same needle
    for n, d in {(r["context_len"], r["depth"]) for r in rows}:
        assert len({r["expected"] for r in rows if (r["context_len"], r["depth"]) == (n, d)}) == 1
    assert data["summary"]["symphony"]["accuracy"] == 1.0  # the oracle
    assert data["summary"]["symphony"]["by_length"] == {"256": 1.0, "512": 1.0}
    check_summary(data)
    assert data["settings"]["needle"] == "number" and data["lengths"] == [256, 512] and data["depths"] == [0, 50]
    for m in ("sinks", "symphony"):
        png = out / f"needle_{m}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "needle accuracy by context length" in res.output
    table = res.output.split("needle accuracy by context length", 1)[1]
    assert re.search(r"symphony\s+100%\s+100%\s+100%", table)


def test_interrupted_run_resumes_without_redoing_cells(tmp_path, monkeypatch, trials):
    out = tmp_path / "needle"
    args = BASE + ["--lengths", "256,1024", "--methods", "full,symphony", "--out", str(out)]
    counting = needle_eval.run_trial

    def interrupt_third(*a, **k):
        if len(trials) == 2:
            trials.append("interrupted")
            raise KeyboardInterrupt
        return counting(*a, **k)

    monkeypatch.setattr(needle_eval, "run_trial", interrupt_third)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 130
    first = load(out)["rows"]
    assert len(first) == 2  # each finished trial was saved at once

    res = CliRunner().invoke(main, args)  # no --resume: refuses, in one line, before loading anything
    assert res.exit_code == 2
    assert "exists; pass --resume" in res.output and len(res.output.strip().splitlines()) == 1

    res = CliRunner().invoke(main, args + ["--seed", "7", "--resume"])  # other settings: refused too
    assert res.exit_code == 2 and "different settings (seed)" in res.output

    monkeypatch.setattr(needle_eval, "run_trial", counting)
    trials.clear()
    res = invoke(args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert len(trials) == 8 - 2  # only the cells that were missing
    data = load(out)
    assert data["rows"][:2] == first  # the old rows are untouched
    assert len({tuple(r[k] for k in KEY_FIELDS) for r in data["rows"]}) == len(data["rows"]) == 8
    beyond = [r for r in data["rows"] if r["method"] == "full" and r["context_len"] == 1024]
    assert beyond and all(r["status"] == "ok" and r["beyond_window"] for r in beyond)  # full past its window runs
    check_summary(data)

    trials.clear()  # resuming a finished grid runs nothing
    assert invoke(args + ["--resume"]).exit_code == 0 and trials == []


def test_full_over_the_memory_limit_is_recorded_not_run(tmp_path, monkeypatch, trials, tiny_loaded):
    monkeypatch.setattr(needle_eval, "held_bytes", lambda device: 0)
    model = tiny_loaded.model
    kv = kv_bytes_per_token(model.config, 4)
    limit = projected_bytes(model, 900, None, 64, kv, 0)  # 256 (+ prompt) fits, 1024 does not
    assert limit > projected_bytes(model, 1024, 196, 64, kv, 0)  # sinks: 196 slots at any length
    out = tmp_path / "needle"
    res = invoke(BASE + ["--lengths", "256,1024", "--methods", "full,sinks", "--memory-limit", str(limit),
                         "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = load(out)
    over = [r for r in data["rows"] if r["status"] == "over_limit"]
    assert {(r["method"], r["context_len"]) for r in over} == {("full", 1024)} and len(over) == 2
    assert all(r["correct"] is None and r["generated"] is None and r["projected_bytes"] > limit for r in over)
    assert len(trials) == 8 - 2
    s = data["summary"]["full"]
    assert s["over_limit"] == 2 and s["trials"] == 2 and s["by_length"]["1024"] is None
    check_summary(data)
    assert (out / "needle_full.png").stat().st_size > 5000
    assert re.search(r"full\s+\S+\s+over", res.output)


@pytest.mark.parametrize("generated,expected,right", [
    ("4815162", "4815162", True),
    ("The secret number is 4815162.", "4815162", True),  # extra words around the right answer
    ("4,815,162", "4815162", True),
    ("4815163", "4815162", False),  # wrong
    ("I don't know.", "4815162", False),
    ("48151620", "4815162", False),  # the number inside a longer number is wrong
    ("14815162", "4815162", False),
    ("It is Saffron, I think", "saffron", True),
    ("saff ron", "saffron", False),
    ("code 3f2a-77 done", "3f2a-77", True),
])
def test_scoring(generated, expected, right):
    assert contains_answer(generated, expected) is right


def test_distractors_are_planted_with_distinct_keys(tiny_loaded):
    tok = tiny_loaded.tokenizer
    corpus = "The quick brown fox jumps over the lazy dog. " * 200
    for seed in range(6):
        needles, ids = cell_input(tok, corpus, 1500, 50, 0, seed, "number", 4)
        target, others = needles[0], needles[1:]
        keys = [n.key for n in needles]
        assert len(set(keys)) == 5 and target.key not in {n.key for n in others}
        assert all(n.value != target.value for n in others)
        text = tok.decode(ids)
        for n in needles:
            assert text.count(n.sentence.strip()) == 1
        assert f"for the {target.key}?" in target.question
        assert len(ids) == 1500
        again = cell_input(tok, corpus, 1500, 50, 0, seed, "number", 4)  # the same cell: the same input
        assert again[1] == ids and [n.value for n in again[0]] == [n.value for n in needles]
    with pytest.raises(Exception, match="distractors"):
        make_needles(random.Random(0), "word", 99)


def test_word_needles_with_distractors_never_share_the_target_value():
    for seed in range(50):
        needles = make_needles(random.Random(seed), "word", 15)
        assert len({n.key for n in needles}) == 16
        assert all(n.value != needles[0].value for n in needles[1:])


def test_parse_depths():
    assert parse_depths("0,10,50%,100") == [0, 10, 50, 100]
    assert parse_depths("12.5") == [12.5]
    for bad in ("x", "101", ""):
        with pytest.raises(Exception):
            parse_depths(bad)


def test_needle_takes_the_same_haystack_sources_as_ruler(tmp_path):
    """--haystack is a source name (builtin, manpages, a dataset) or a file; a missing file is one line."""
    res = helpers.invoke(["eval", "needle", "-c", "tiny", "--haystack", str(tmp_path / "missing.txt"), "--lengths",
                          "200", "--depths", "50", "--out", str(tmp_path / "n")])
    assert "text file not found" in helpers.one_line_error(res)
    text = tmp_path / "hay.txt"
    text.write_text("Quiet rivers run past old mills. " * 200)
    res = helpers.invoke(["eval", "needle", "-c", "tiny", "--haystack", str(text), "--lengths", "200", "--depths",
                          "50", "--methods", "sinks", "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "n" / "needle.json").read_text())["settings"]["haystack"] == str(text)
