"""What every `symphony eval` suite shares: an unwritable --out, a results file that is not ours and bad
counts all fail at once, in one line (exit 2), before any model is loaded."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import symphony.runtime.engine
import symphony.evaluation.oom as oom_eval
from symphony.cli.main import main

SUITES = {"oom": "oom.json", "needle": "needle.json", "ppl": "ppl.json", "integrity": "integrity.json"}
FAST = {"oom": ["--lengths", "256"], "needle": ["--lengths", "256", "--depths", "50"],
        "ppl": ["--max-tokens", "64"], "integrity": ["--only", "capital_france"]}


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (or starting a measurement worker) fails the test."""
    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(symphony.runtime.engine, "engine_from_config", loaded)
    monkeypatch.setattr(oom_eval, "run_worker", loaded)


def run(suite, *args):
    return CliRunner().invoke(main, ["eval", suite, "-c", "tiny", *FAST[suite], *args])


def assert_one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    for f in fragments:
        assert f in lines[0], res.output


# -- --out -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", SUITES)
def test_out_under_a_file_fails_before_loading(tmp_path, no_model, suite):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "results"
    assert_one_line_error(run(suite, "--out", str(out)), "cannot write to", str(out), "choose another --out")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod")
@pytest.mark.parametrize("suite", SUITES)
def test_out_in_a_read_only_folder_fails_before_loading(tmp_path, no_model, suite):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_one_line_error(run(suite, "--out", str(ro / "results")), "Permission denied", "choose another --out")
    finally:
        ro.chmod(0o700)


# -- a results file that is not ours -----------------------------------------------------------------
@pytest.mark.parametrize("body", ['[]', '{"rows": 5}', '["a", "b"]', '{"rows": ["x"]}', '"rows"', '{}',
                                  '{"rows": [], "settings": [1], "config": 3, "per_position": "x"}'])
@pytest.mark.parametrize("suite", SUITES)
def test_resume_from_a_file_that_is_not_a_results_file(tmp_path, no_model, suite, body):
    if suite == "integrity" and body.startswith('{"rows": [],'):
        pytest.skip("integrity reads back no sections")
    path = tmp_path / SUITES[suite]
    path.write_text(body)
    res = run(suite, "--out", str(tmp_path), "--resume")
    assert_one_line_error(res, "not a Symphony results file", str(path), "another --out", "delete it")
    assert path.read_text() == body  # never deleted or overwritten


# -- bad counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite,args", [
    ("integrity", ["--max-new-tokens", "-1"]),
    ("integrity", ["--max-new-tokens", "0"]),
    ("integrity", ["--prefix-tokens", "-5"]),
    ("needle", ["--lengths", "0"]),
    ("needle", ["--lengths", "-1k"]),
    ("needle", ["--lengths", "inf"]),
    ("needle", ["--lengths", "nan"]),
    ("needle", ["--depths", "nan"]),
    ("needle", ["--depths", "-5"]),
    ("needle", ["--distractors", "-1"]),
    ("needle", ["--distractors", "1000"]),
    ("needle", ["--trials", "0"]),
    ("needle", ["--max-new-tokens", "0"]),
    ("ppl", ["--max-tokens", "0"]),
    ("ppl", ["--max-tokens", "-5"]),
    ("ppl", ["--bucket", "0"]),
    ("ppl", ["--stride", "0"]),
    ("oom", ["--lengths", "infk"]),
    ("oom", ["--decode-tokens", "-1"]),
    ("oom", ["--time-limit", "nan"]),
    ("oom", ["--time-limit", "inf"]),
    ("oom", ["--time-limit", "0"]),
    ("oom", ["--memory-limit", "0"]),
    ("needle", ["--memory-limit", "0GB"]),
    ("ppl", ["--memory-limit", "nan"]),
    ("integrity", ["--memory-limit", "-1GB"]),
])
def test_bad_values_are_refused_before_loading(tmp_path, no_model, suite, args):
    res = run(suite, "--out", str(tmp_path / "o"), *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    assert not (tmp_path / "o" / SUITES[suite]).exists()


def test_stride_not_below_the_window_is_refused_before_scoring(tmp_path, monkeypatch):
    import symphony.evaluation.ppl as ppl_eval

    def scored(*a, **k):
        raise AssertionError("scored before the error")

    monkeypatch.setattr(ppl_eval, "streaming_nll", scored)
    res = CliRunner().invoke(main, ["eval", "ppl", "-c", "tiny", "--max-tokens", "300", "--full-window", "100",
                                    "--stride", "100", "--out", str(tmp_path)])
    assert_one_line_error(res, "--stride 100", "lower --stride")


def test_results_file_of_a_finished_run_has_group_readable_mode(tmp_path):
    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(main, ["eval", "integrity", "-c", "tiny", "--out", str(tmp_path),
                                        "--prefix-tokens", "0", "--max-new-tokens", "2", "--only", "capital_france"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert os.stat(tmp_path / "integrity.json").st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
