"""`symphony eval ruler`: the task generators (determinism, planted needles, references, exact lengths), RULER's
metric, the suite end to end on the tiny model with resume, bad input, and the manpages haystack source."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

import helpers
import symphony.corpus as corpus
import symphony.evaluation.ruler as ruler_eval
from symphony.errors import SymphonyError
from symphony.evaluation.ruler_tasks import (NAMES, PARAPHRASES, TASKS, Sources, exact_all, make_sample, parse_tasks,
                                             string_match_all)

invoke = functools.partial(helpers.invoke, catch_exceptions=False)
CORPUS = "The harbour master keeps the ledger of ships. Gulls circle over the quay at dawn. " * 60
STOP = {"the", "a", "an", "of", "in", "on", "to", "for", "by", "at", "its", "their", "her", "his", "was", "is",
        "did", "does", "when", "what", "which", "how", "many", "much", "year", "get", "from", "into", "off"}


@pytest.fixture(scope="module")
def sources(tiny_loaded):
    return Sources(tiny_loaded.tokenizer, CORPUS)


def text_of(sources, ids):
    return sources.tokenizer.decode(ids)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_is_deterministic_exact_length_and_plants_its_answers(sources, task):
    n = 900
    s = make_sample(task, sources, n, 0, seed=3)
    again = make_sample(task, sources, n, 0, seed=3)  # what every method (and a resumed run) gets
    assert again == s
    assert make_sample(task, sources, n, 1, seed=3).context != s.context  # another sample is another input
    assert len(s.context) == n  # haystack + needles is the whole length; question and template on top
    text = text_of(sources, s.context)
    for needle in s.needles:
        assert text.count(needle) == 1
    for ref in s.references:
        assert ref in text
    assert s.prefix and s.question


def test_niah_references_and_questions(sources):
    s = make_sample("niah_single_1", sources, 600, 0)
    key = re.search(r"for (\S+) mentioned", s.question).group(1)
    assert s.needles == [f"One of the special magic numbers for {key} is: {s.references[0]}."]
    assert re.fullmatch(r"\d{7}", s.references[0]) and "grass is green" in text_of(sources, s.context)
    assert s.prefix == f"The special magic number for {key} mentioned in the provided text is"

    s = make_sample("niah_single_3", sources, 600, 0)
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", s.references[0])

    s = make_sample("niah_multivalue", sources, 900, 0)  # 4 values under one key, all asked
    assert len(s.references) == len(set(s.references)) == 4 and len(s.needles) == 4
    assert len({re.search(r"for (\S+) is", n).group(1) for n in s.needles}) == 1
    assert s.prefix.startswith("The special magic numbers for") and s.prefix.endswith("are")

    s = make_sample("niah_multiquery", sources, 900, 0)  # 4 keys in one question
    keys = [re.search(r"for (\S+) is", n).group(1) for n in s.needles]
    assert len(set(keys)) == 4 and f"{keys[0]}, {keys[1]}, {keys[2]} and {keys[3]}" in s.question

    s = make_sample("niah_multikey_1", sources, 900, 0)  # one asked, three look-alikes with other keys
    keys = [re.search(r"for (\S+) is", n).group(1) for n in s.needles]
    assert len(set(keys)) == 4 and len(s.references) == 1 and f"for {keys[0]} mentioned" in s.question


@pytest.mark.parametrize("task", ["niah_multikey_2", "niah_multikey_3"])
def test_needle_only_haystack_is_only_needles(sources, task):
    s = make_sample(task, sources, 1500, 2)
    lines = [line for line in text_of(sources, s.context).split("\n") if line]
    assert len(lines) == len(s.needles) > 10
    assert all(re.fullmatch(r"One of the special magic (numbers|uuids) for \S+ is: \S+\.", x) for x in lines)
    keys = [re.search(r"for (\S+) is", x).group(1) for x in lines]
    assert len(set(keys)) == len(keys)  # the question's key names exactly one needle
    asked = re.search(r"for (\S+) mentioned", s.question).group(1)
    assert [x for x in lines if f"for {asked} is" in x] == [x for x in lines if x.endswith(f" {s.references[0]}.")]
    assert sum(f"for {asked} is" in x for x in lines) == 1


def test_variable_tracking_chain(sources):
    s = make_sample("vt", sources, 800, 1)
    names = s.references
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", x) for x in names)
    value = re.search(r"value (\d{5}) in the text", s.question).group(1)
    text = text_of(sources, s.context)
    lines = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    assert s.needles == lines
    where = [text.index(x) for x in lines]
    assert where == sorted(where)  # the chain in order
    assert "5 variables are assigned the value " + value in s.prefix and "grass is green" in text


@pytest.mark.parametrize("task", ["paraphrase", "paraphrase_distractors"])
def test_paraphrase_question_shares_no_content_word_but_the_name(sources, task):
    for i in range(6):
        s = make_sample(task, sources, 900, i)
        assert len(s.needles) == (4 if task == "paraphrase_distractors" else 1)
        assert s.prefix == "Answer:" and s.references[0] in s.needles[0]
        name = next(n for n in NAMES if n in s.question)
        assert name in s.needles[0] and all(name not in x for x in s.needles[1:])
        shape = lambda x: re.sub(r"\d+|" + "|".join(NAMES), "_", x)  # noqa: E731
        assert len({shape(x) for x in s.needles}) == 1  # look-alikes: the same fact, other names and values
        assert len({x.split(" in ")[-1] for x in s.needles}) == len(s.needles)
    words = lambda t: {w for w in re.findall(r"[a-z]+", t.lower()) if w not in STOP and w not in ("name", "value")}  # noqa: E731
    for fact, question, _ in PARAPHRASES:
        assert not words(fact) & words(question), (fact, question)


def test_too_short_a_length_is_one_clear_error(sources):
    with pytest.raises(SymphonyError, match="too short for niah_multiquery"):
        make_sample("niah_multiquery", sources, 100, 0)


@pytest.mark.parametrize("prediction,references,score", [
    ("The number is 1234567.", ["1234567"], 1.0),
    ("1234567, 2345678, 3456789 and 4567890", ["1234567", "2345678", "3456789", "4567890"], 1.0),
    ("1234567 and 2345678", ["1234567", "2345678", "3456789", "4567890"], 0.5),  # 2 of 4
    ("I do not know", ["1234567"], 0.0),
    ("ABCDE fghij", ["abcde", "FGHIJ"], 1.0),  # case-insensitive
])
def test_rulers_string_match_all(prediction, references, score):
    assert string_match_all(prediction, references) == score
    assert exact_all(prediction, references) is (score == 1.0)


BASE = ["eval", "ruler", "-c", "tiny", "--tasks", "niah_single_1,vt", "--lengths", "200,300", "--samples", "2",
        "--methods", "sinks,symphony"]


def test_end_to_end_writes_json_and_plot_and_resumes(tmp_path, monkeypatch):
    calls = []
    real = ruler_eval.run_sample

    def oracle(engine, ids, question, prefix, max_new_tokens):
        """symphony answers right (found in the context), the others with the tiny model's real generation."""
        calls.append(engine.policy)
        out = real(engine, ids, question, prefix, max_new_tokens)
        if engine.policy == "symphony":
            text = engine.tokenizer.decode(ids)
            return " ".join(re.findall(r"VAR ([A-Z]{5})", text) + re.findall(r"is: (\d{7})", text)), text
        return out

    monkeypatch.setattr(ruler_eval, "run_sample", oracle)
    out = tmp_path / "ruler"
    res = invoke(BASE + ["--out", out])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "ruler.json").read_text())
    rows = data["rows"]
    assert len(rows) == len(calls) == 2 * 2 * 2 * 2
    for r in rows:
        assert {"task", "method", "context_len", "sample", "references", "prediction", "score", "seconds",
                "status"} <= set(r) and r["status"] == "ok"
        assert r["score"] == 100 * string_match_all(r["prediction"], r["references"])
    for key in {(r["task"], r["context_len"], r["sample"]) for r in rows}:  # every method, the same input
        assert len({tuple(r["references"]) for r in rows if (r["task"], r["context_len"], r["sample"]) == key}) == 1
    assert data["summary"]["symphony"]["score"] == 100.0
    # recall's diagnosis: the oracle "re-read" the whole context, so every reference's sentence was there
    assert all(r["facts_reread"] == len(r["references"]) for r in rows if r["method"] == "symphony")
    assert all("reread" not in r for r in rows if r["method"] == "sinks")
    assert (out / "ruler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = res.output.split("RULER score", 1)[1]
    assert re.search(r"average\s+\S+\s+\S+\s+100\.0\s+100\.0", table)

    calls.clear()
    assert invoke(BASE + ["--out", out, "--resume"]).exit_code == 0 and calls == []  # nothing recomputed
    res = helpers.invoke(BASE + ["--out", out, "--resume", "--seed", "1"])
    assert res.exit_code == 2 and "different settings (seed)" in res.output


def test_full_over_the_memory_limit_is_recorded_not_run(tmp_path, monkeypatch, tiny_loaded):
    from symphony.evaluation.limits import projected_bytes
    from symphony.models.info import kv_bytes_per_token

    monkeypatch.setattr(ruler_eval, "run_sample", lambda *a: ("nothing", ""))
    monkeypatch.setattr("symphony.evaluation.needle.held_bytes", lambda device: 0)
    limit = projected_bytes(tiny_loaded.model, 1500, None, 64, kv_bytes_per_token(tiny_loaded.model.config, 4), 0)
    out = tmp_path / "r"
    res = invoke(["eval", "ruler", "-c", "tiny", "--tasks", "vt", "--lengths", "200,2000", "--samples", "1",
                  "--methods", "full,sinks", "--memory-limit", str(limit), "--out", out])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "ruler.json").read_text())["rows"]
    over = {(r["method"], r["context_len"]) for r in rows if r["status"] == "over_limit"}
    assert ("full", 2000) in over and ("sinks", 2000) not in over
    assert re.search(r"vt\s+\S+\s+over", res.output)


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "niah_single_9"], "unknown task(s) niah_single_9"),
    (["--lengths", "4q"], "cannot read length"),
    (["--samples", "0"], "--samples must be at least 1"),
    (["--haystack", "/nonexistent/hay.txt"], "not found"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    res = helpers.invoke("eval", "ruler", "-c", "tiny", "--out", tmp_path / "o", *args)
    assert needle in helpers.one_line_error(res)


def test_parse_tasks():
    assert parse_tasks("all") == list(TASKS) == parse_tasks("")
    assert parse_tasks("vt, paraphrase,vt") == ["vt", "paraphrase"]


def test_manpages_source_renders_pages_in_order_and_caches(tmp_path, monkeypatch):
    pages = [tmp_path / f"p{i}.1" for i in range(12)]
    rendered = []

    def fake_render(path):
        rendered.append(path.name)
        return "" if path.name == "p3.1" else f"{path.name.upper()}\n" + "x" * 98

    monkeypatch.setattr(corpus, "manpage_files", lambda dirs=corpus.MANPAGE_DIRS: pages)
    monkeypatch.setattr(corpus, "render_manpage", fake_render)
    cache = tmp_path / "cache" / "manpages.txt"
    text = corpus.manpages_text(limit_chars=500, cache=cache)
    assert text.startswith("P0.1\n") and "P3.1" not in text and text.index("P1.1") < text.index("P2.1")
    assert 500 <= len(text) < 800 and cache.read_text() == text
    assert len(rendered) < len(pages)  # stops once it has enough
    rendered.clear()
    assert corpus.manpages_text(limit_chars=500, cache=cache) == text[:500] and rendered == []  # from the cache

    monkeypatch.setattr(corpus, "manpage_files", lambda dirs=corpus.MANPAGE_DIRS: [])
    with pytest.raises(SymphonyError, match="--haystack FILE"):
        corpus.manpages_text(cache=tmp_path / "other.txt")


def test_manpages_renders_a_real_page_when_man_is_here():
    import shutil

    files = corpus.manpage_files()
    if not (shutil.which("man") and shutil.which("col") and files):
        pytest.skip("no man pages here")
    page = next((f for f in files if f.name.startswith("ls.1")), files[0])
    assert len(corpus.render_manpage(Path(page))) > 100
