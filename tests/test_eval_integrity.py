"""Integrity suite: the judges against hand-made answers, and the command end to end on the tiny model."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from symphony.cli.main import main
from symphony.evaluation.integrity import BATTERY, extract_code, judge, summarize


def _check(name):
    return next(c for c in BATTERY if c.name == name)


def test_battery_is_large_and_covers_categories():
    assert len(BATTERY) >= 30
    assert {c.category for c in BATTERY} == {"knowledge", "arithmetic", "instruction", "code"}
    assert len({c.name for c in BATTERY}) == len(BATTERY)


@pytest.mark.parametrize("name,output,ok", [
    ("capital_france", "The capital of France is Paris.", True),
    ("capital_france", "It is Lyon.", False),
    ("capital_france", "Paris, of course! It has been the capital since long ago.", True),
    ("add_tens", "30", True),
    ("add_tens", "The answer is 300.", False),  # a number inside a longer number is wrong
    ("add_tens", "10 + 20 = 30, the answer.", True),
    ("days_week", "There are seven days in a week.", True),
    ("say_yes", "Yes.", True),
    ("say_yes", "Yes, of course I can help.", False),
    ("uppercase", "HELLO", True),
    ("uppercase", "hello", False),
    ("list_three", "red, green, blue", True),
    ("list_three", "red", False),
    ("sun_star", "The Sun is a star.", True),
    ("sun_star", "It is a planet, starting to burn.", False),  # 'star' must be a whole word
])
def test_judge_hand_made_cases(name, output, ok):
    assert judge(_check(name), output) is ok


def test_code_judge_parses_python():
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    bad = "```python\ndef add(a, b)\n    return a +\n```"
    assert judge(_check("code_add"), good)
    assert not judge(_check("code_add"), bad)
    assert not judge(_check("code_add"), "I cannot write code.")
    assert extract_code("def f():\n    return 1") .startswith("def f")


def test_summary_fractions():
    rows = [dict(category="code", base_ok=True, symphony_ok=False, same_output=False, symphony_long_ok=None),
            dict(category="code", base_ok=True, symphony_ok=True, same_output=True, symphony_long_ok=None)]
    s = summarize(rows)
    assert s["base_ok"] == 1.0 and s["symphony_ok"] == 0.5 and s["symphony_long_ok"] is None


def test_integrity_command_end_to_end_and_resume(tmp_path):
    args = ["eval", "integrity", "-c", "tiny", "--out", str(tmp_path), "--prefix-tokens", "200",
            "--max-new-tokens", "6", "--only", "capital_france,code_add"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "integrity.json").read_text())
    assert [c["name"] for c in data["checks"]] == ["capital_france", "code_add"]
    for c in data["checks"]:
        assert {"name", "category", "base_ok", "symphony_ok", "same_output"} <= set(c)
        # untrained Symphony at short context is the base model: same greedy output
        assert c["same_output"] is True and c["base_output"] == c["symphony_output"]
        assert c["symphony_long_output"] is not None
    assert data["summary"]["checks"] == 2
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    more = CliRunner().invoke(main, args[:-1] + ["capital_france,code_add,add_small", "--resume"])
    assert more.exit_code == 0, more.output
    data2 = json.loads((tmp_path / "integrity.json").read_text())
    assert [c["name"] for c in data2["checks"]] == ["capital_france", "code_add", "add_small"]
    assert data2["checks"][:2] == data["checks"]  # finished cells were kept, not redone


def test_unknown_check_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["eval", "integrity", "-c", "tiny", "--out", str(tmp_path), "--only", "nope"])
    assert r.exit_code == 2 and "unknown check" in r.output
