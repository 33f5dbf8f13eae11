"""The documents that are generated or bounded stay so: docs/RESULTS.md is what the JSON says, the README is
for users (short), docs/ARCHITECTURE.md names at most two files per kind of extension."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_document_is_generated_from_the_json():
    results = _script("results_tables")
    assert (ROOT / "docs" / "RESULTS.md").read_text() == results.render(ROOT / "docs" / "results"), \
        "docs/RESULTS.md is stale: run python benchmarks/results_tables.py"


def test_readme_is_short_and_has_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.split()) <= 1500
    assert "make demo" in text and "make test" in text


def test_architecture_says_what_to_touch_for_each_extension():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| a")}
    assert {"a cache policy", "a memory kind", "a phase", "an eval suite"} <= set(rows)


def test_eval_group_lists_the_suites_registry():
    from symphony.cli.evals import SUITES
    from symphony.cli.main import eval as eval_group

    assert set(eval_group.commands) == set(SUITES)
