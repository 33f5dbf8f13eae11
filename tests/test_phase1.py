"""Phase 1 (freeze) end to end on the tiny model, through the library and the CLI; CLI help and errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import invoke, one_line_error
from symphony.pipeline.phases import PHASES, get_phase
from symphony.cli.main import main
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.pipeline.runs import manifest_path, read_manifest


def run_phase1(cfg, run_dir, force=False):
    return get_phase(1)(cfg, run_dir, force=force, progress=False)


def check_manifest(m: dict, cfg) -> None:
    assert m["phase"] == 1
    assert m["name"] == "freeze"
    assert isinstance(m["fingerprint"], str) and len(m["fingerprint"]) == 16
    assert m["config"] == cfg.to_dict()
    assert m["versions"]["torch"] and m["versions"]["transformers"]
    model = m["model"]
    assert model["architecture"] == "LlamaForCausalLM"
    assert model["source"] == "tiny" and model["name"] == "tiny-llama"
    assert model["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert model["context_window"] == 512
    params = m["parameters"]
    assert params["total"] > 0 and params["trainable"] == 0
    assert params["frozen"] == params["total"]
    n_layers = model["num_layers"]
    assert n_layers == 2
    stats = m["stats"]
    assert stats["tokens"] == cfg.calibration.tokens
    assert len(stats["hidden_norm_mean"]) == n_layers + 1
    assert len(stats["mlp_out_norm_mean"]) == n_layers
    for x in stats["hidden_norm_mean"] + stats["mlp_out_norm_mean"]:
        assert isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory):
    """One phase-1 run on the tiny config, shared by the read-only checks below."""
    cfg = load_config("tiny")
    run_dir = tmp_path_factory.mktemp("run")
    result = run_phase1(cfg, run_dir)
    return cfg, run_dir, result


# --- the library entry point ------------------------------------------------------------------------

def test_phase1_writes_a_complete_manifest(phase1_run):
    cfg, run_dir, result = phase1_run
    assert result["status"] == "written"
    path = manifest_path(run_dir, 1)
    assert path == run_dir / "phase1" / "manifest.json"
    on_disk = json.loads(path.read_text())
    check_manifest(on_disk, cfg)
    assert {k: v for k, v in result.items() if k != "status"} == on_disk
    # no temp files left beside the manifest
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_phase1_is_idempotent(phase1_run):
    cfg, run_dir, _ = phase1_run
    path = manifest_path(run_dir, 1)
    before = path.read_bytes()
    again = run_phase1(load_config("tiny"), run_dir)
    assert again["status"] == "up-to-date"
    assert path.read_bytes() == before
    assert again["fingerprint"] == json.loads(before)["fingerprint"]


def test_cache_only_change_keeps_phase1_up_to_date(phase1_run):
    # the fingerprint covers what changes the artifact (model, calibration, seed), not cache sizes
    _, run_dir, _ = phase1_run
    before = manifest_path(run_dir, 1).read_bytes()
    assert run_phase1(load_config("tiny", ["cache.window=64"]), run_dir)["status"] == "up-to-date"
    assert manifest_path(run_dir, 1).read_bytes() == before


@pytest.mark.parametrize("override", ["model.name=tiny-qwen2", "seed=1", "calibration.tokens=128"])
def test_different_config_in_same_run_dir_errors(phase1_run, override):
    _, run_dir, _ = phase1_run
    before = manifest_path(run_dir, 1).read_bytes()
    with pytest.raises(SymphonyError) as ei:
        run_phase1(load_config("tiny", [override]), run_dir)
    msg = str(ei.value)
    assert "different model/calibration config" in msg and "--force" in msg and "--run-dir" in msg
    assert manifest_path(run_dir, 1).read_bytes() == before


def test_force_rewrites(tmp_path):
    cfg = load_config("tiny")
    first = run_phase1(cfg, tmp_path)
    path = manifest_path(tmp_path, 1)
    inode = path.stat().st_ino
    forced = run_phase1(cfg, tmp_path, force=True)
    assert forced["status"] == "written"
    assert path.stat().st_ino != inode  # a new file, atomically moved into place
    assert forced["fingerprint"] == first["fingerprint"]
    # --force also lets a different config take over the run dir
    other = load_config("tiny", ["seed=1"])
    replaced = run_phase1(other, tmp_path, force=True)
    assert replaced["status"] == "written" and replaced["fingerprint"] != first["fingerprint"]
    check_manifest(read_manifest(tmp_path, 1), other)
    assert run_phase1(other, tmp_path)["status"] == "up-to-date"


def test_seed_changes_statistics(phase1_run, tmp_path):
    _, _, base = phase1_run
    other = run_phase1(load_config("tiny", ["seed=1"]), tmp_path)
    assert other["stats"]["hidden_norm_mean"] != base["stats"]["hidden_norm_mean"]


def test_phase1_on_other_tiny_architectures(tmp_path):
    cfg = load_config("tiny", ["model.name=tiny-mistral", "calibration.tokens=64", "calibration.segment_len=32"])
    m = run_phase1(cfg, tmp_path)
    assert m["model"]["architecture"] == "MistralForCausalLM"
    assert m["stats"]["tokens"] == 64
    assert len(m["stats"]["mlp_out_norm_mean"]) == m["model"]["num_layers"]


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    path = manifest_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text('{"phase": 1, "fingerp')
    with pytest.raises(SymphonyError) as ei:
        run_phase1(load_config("tiny"), tmp_path)
    msg = str(ei.value)
    assert "corrupt" in msg and str(path) in msg and "--force" in msg
    # and --force recovers
    assert run_phase1(load_config("tiny"), tmp_path, force=True)["status"] == "written"


def test_missing_manifest_needed_by_a_later_phase_names_the_command(tmp_path):
    with pytest.raises(SymphonyError, match="run first: symphony run-phase 1"):
        read_manifest(tmp_path, 1, needed_by=2)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_every_phase_is_built(n):
    assert callable(get_phase(n))


@pytest.mark.parametrize("n", [0, 8, -1])
def test_no_such_phase(n):
    with pytest.raises(SymphonyError, match="phases are 1-7"):
        get_phase(n)


def test_phase_table_covers_one_to_seven():
    assert sorted(PHASES) == list(range(1, 8))


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_run_phase1(tmp_path):
    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path)
    assert res.exit_code == 0, res.output
    assert f"phase 1 (freeze): written -> {manifest_path(tmp_path, 1)}" in res.stdout
    assert "LlamaForCausalLM" in res.stdout and "0 trainable" in res.stdout
    check_manifest(read_manifest(tmp_path, 1), load_config("tiny"))
    before = manifest_path(tmp_path, 1).read_bytes()

    res = invoke("run-phase", 1, "-c", "tiny", "--run-dir", tmp_path)
    assert res.exit_code == 0, res.output
    assert "up-to-date" in res.stdout
    assert manifest_path(tmp_path, 1).read_bytes() == before

    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path, "--set", "seed=2")
    assert res.exit_code == 2
    assert "different model/calibration config" in res.stderr
    assert manifest_path(tmp_path, 1).read_bytes() == before

    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path, "-s", "seed=2", "--force")
    assert res.exit_code == 0, res.output
    assert "written" in res.stdout
    assert read_manifest(tmp_path, 1)["config"]["seed"] == 2


def test_cli_corrupt_manifest(tmp_path):
    path = manifest_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text("not json at all")
    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path)
    assert res.exit_code == 2
    assert "corrupt" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_cli_phase_before_its_prerequisite_exit_2_with_one_line(n, tmp_path):
    line = one_line_error(invoke("run-phase", n, "-c", "tiny", "-r", tmp_path))
    assert f"run first: symphony run-phase {1 if n == 3 else n - 1} --run-dir {tmp_path}" in line
    assert not (tmp_path / f"phase{n}").exists()


def test_cli_bad_config_is_one_line_error(tmp_path):
    line = one_line_error(invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path, "--set", "cache.windw=3"))
    assert "cache.windw" in line
    line = one_line_error(invoke("run-phase", 1, "-c", "nope", "-r", tmp_path))
    assert "unknown config preset" in line
    line = one_line_error(invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path, "-s", "model.device=tpu"))
    assert "model.device" in line


def test_cli_missing_model_is_one_line_error(tmp_path):
    line = one_line_error(invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path, "-s", "model.name=./no/such/model"))
    assert "model path not found" in line


def test_cli_lists_every_eval_suite():
    res = invoke("eval", "--help")
    assert res.exit_code == 0
    for suite in ("oom", "needle", "ppl", "integrity"):
        assert suite in res.output


def test_cli_info_on_tiny():
    res = invoke("info", "-c", "tiny")
    assert res.exit_code == 0, res.output
    assert "# resolved config" in res.stdout and "tiny-llama" in res.stdout
    assert "KV cache per token: 512 B (float32)" in res.stdout


def test_cli_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    for cmd in ("run-phase", "eval", "chat", "info"):
        assert cmd in res.stdout


def _all_command_paths():
    import click

    paths = []

    def walk(cmd, prefix):
        paths.append(prefix)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, prefix + [name])

    walk(main, [])
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "symphony")
def test_every_command_has_help(path):
    for flag in ("--help", "-h"):
        res = invoke(*path, flag)
        assert res.exit_code == 0, res.output
        assert "Usage:" in res.stdout


def test_eval_subcommands_listed():
    res = invoke("eval", "--help")
    for suite in ("oom", "needle", "ppl", "integrity"):
        assert suite in res.stdout


def test_run_phase_help_lists_the_phases():
    res = invoke("run-phase", "--help")
    for word in ("--config", "--set", "--run-dir", "--force", "freeze", "inject", "finetune"):
        assert word in res.stdout


def test_installed_console_script(tmp_path):
    """The real entry point in a real process: help works, errors exit 2 without a traceback."""
    from pathlib import Path

    exe = Path(sys.executable).parent / "symphony"
    if not exe.exists():
        pytest.skip("the symphony console script is not installed next to this python")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "run-phase" in res.stdout
    res = subprocess.run([str(exe), "run-phase", "9", "-c", "tiny", "-r", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: there is no phase 9; phases are 1-7"
