"""The documents that are generated or bounded stay so: docs/RESULTS.md is what the JSON says, the README is
for users (short), docs/ARCHITECTURE.md names at most two files per kind of extension."""
from __future__ import annotations

import importlib.util
import re
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
