"""Helpers for tests that drive the `symphony` command line."""
from __future__ import annotations

from click.testing import CliRunner

from symphony.cli.main import main


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def one_line_error(res) -> str:
    """The single `error: ...` line of a refused command (exit 2, no traceback)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def usage_error(res, option: str) -> str:
    """click's refusal of a bad option value: exit 2, no traceback, the error names the option."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = next(line for line in res.stderr.splitlines() if line.startswith("Error:"))
    assert option in line, res.stderr
    return line
