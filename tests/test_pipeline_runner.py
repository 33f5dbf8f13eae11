"""The phase registry and the one rule every phase follows in a run dir: up to date -> skipped; made with other
settings -> refused with a command that redoes it; --force -> rebuilt."""
from __future__ import annotations

import importlib
import shlex
import typing

import pytest

from helpers import invoke
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.pipeline.phases import PHASES, TrainingSpec, get_phase, training_spec
from symphony.pipeline.runs import PhaseRun, manifest_path, phase_dir, write_manifest
from symphony.pipeline.train import run_training_phase


# ---- the registry ------------------------------------------------------------------------------------

def test_every_phase_has_a_runner_that_resolves():
    assert list(PHASES) == list(range(1, len(PHASES) + 1))
    for n, phase in PHASES.items():
        assert phase.number == n
        module, _, name = phase.runner.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), phase.runner
        assert callable(get_phase(n))
    with pytest.raises(SymphonyError, match=f"there is no phase {len(PHASES) + 1}"):
        get_phase(len(PHASES) + 1)


def test_training_phases_are_declared_by_a_spec():
    training = [n for n, p in PHASES.items() if p.trains]
    assert training == [4, 5, 6, 7]
    hints = typing.get_type_hints(TrainingSpec)
    for n in training:
        spec = training_spec(n)
        assert get_phase(n).func is run_training_phase and get_phase(n).keywords == {"phase": n}
        assert spec.trains in typing.get_args(hints["trains"])
        assert spec.samples in typing.get_args(hints["samples"])
        assert spec.starts_from < n  # a phase starts from the adapters an earlier phase made
    assert [p.number for p in PHASES.values() if p.trains and p.training.exports_final] == [max(training)]
    with pytest.raises(SymphonyError, match="not a training phase"):
        training_spec(3)


# ---- PhaseRun, the decision alone --------------------------------------------------------------------

def test_phase_run_decides_skip_refuse_redo(tmp_path):
    cfg = load_config("tiny")
    run = PhaseRun(tmp_path, 5, "fp-a", "other settings", cfg, files=("weights.bin",), dirs=("split",),
                   recorded={"from_sha256": "abc"})
    assert run.up_to_date() is None  # nothing there yet: build
    write_manifest(tmp_path, 5, {"fingerprint": "fp-a", "from_sha256": "abc"})
    assert run.up_to_date() is None  # made with these settings, but incomplete: build again
    (run.dir / "weights.bin").write_bytes(b"")
    (run.dir / "split").mkdir()
    assert run.up_to_date()["status"] == "up-to-date"
    assert run.up_to_date(force=True) is None

    for other in (PhaseRun(tmp_path, 5, "fp-b", "other settings", cfg),  # other fingerprint
                  PhaseRun(tmp_path, 5, "fp-a", "other settings", cfg, recorded={"from_sha256": "def"})):
        with pytest.raises(SymphonyError) as ei:
            other.up_to_date()
        msg = str(ei.value)
        assert "\n" not in msg and str(manifest_path(tmp_path, 5)) in msg and "made with other settings" in msg
        assert f"symphony run-phase 5 --run-dir {tmp_path} -c tiny" in msg and msg.endswith("--force")
        assert other.up_to_date(resumable=lambda: True) is None  # an interrupted redo with these settings resumes
        assert other.up_to_date(force=True) is None
    # a field the old manifest does not record is not held against it
    write_manifest(tmp_path, 5, {"fingerprint": "fp-a"})
    assert run.up_to_date()["status"] == "up-to-date"


def test_a_failed_build_keeps_the_previous_phase(tmp_path):
    run = PhaseRun(tmp_path, 1, "fp", "other settings")
    with run.stage() as stage:
        write_manifest(tmp_path, 1, {"fingerprint": "fp"}, into=stage)
    before = manifest_path(tmp_path, 1).read_bytes()
    with pytest.raises(KeyboardInterrupt), run.stage() as stage:
        write_manifest(tmp_path, 1, {"fingerprint": "other"}, into=stage)
        raise KeyboardInterrupt
    assert manifest_path(tmp_path, 1).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phase1"]
    assert run.result()["status"] == "written" and run.result()["fingerprint"] == "fp"


# ---- every runner follows it -------------------------------------------------------------------------

# one setting per phase that changes that phase's artifact (and keeps the earlier phases valid)
CHANGES = {1: "calibration.tokens=200", 2: "memory.holo_dim=16", 3: "data.train_samples=10", 4: "train.lr=0.002"}


def test_phases_1_to_4_skip_refuse_and_redo_alike(tmp_path):
    run_dir = tmp_path / "run"
    sets = ["train.max_steps=1"]
    for n, change in CHANGES.items():
        phase = get_phase(n)
        cfg = load_config("tiny", sets)
        assert phase(cfg, run_dir, progress=False)["status"] == "written"
        first = manifest_path(run_dir, n).read_bytes()
        assert phase(cfg, run_dir, progress=False)["status"] == "up-to-date"

        sets = [*sets, change]
        with pytest.raises(SymphonyError) as ei:
            phase(load_config("tiny", sets), run_dir, progress=False)
        msg = str(ei.value)
        assert "\n" not in msg and f"{manifest_path(run_dir, n)} was made with" in msg
        assert manifest_path(run_dir, n).read_bytes() == first  # refused: nothing touched

        # the hint is the command that redoes the phase with the new settings, as printed
        hint = msg.rsplit(": ", 1)[1]
        args = shlex.split(hint)
        assert args[:5] == ["symphony", "run-phase", str(n), "--run-dir", str(run_dir)] and args[-1] == "--force"
        assert args[5:7] == ["-c", "tiny"]
        hinted = [a for flag, a in zip(args, args[1:]) if flag == "--set"]
        assert load_config("tiny", hinted).to_dict() == load_config("tiny", sets).to_dict()
        res = invoke(*args[1:])
        assert res.exit_code == 0 and f"phase {n} " in res.output and ": written ->" in res.output, res.output
        assert manifest_path(run_dir, n).read_bytes() != first
        assert phase(load_config("tiny", sets), run_dir, progress=False)["status"] == "up-to-date"
        assert not any(p.name.startswith(".") for p in run_dir.iterdir())  # no staging left behind
    assert sorted(p.name for p in phase_dir(run_dir, 4).iterdir()) == \
        ["adapters.safetensors", "loss.png", "manifest.json", "metrics.jsonl"]


def test_hints_for_an_old_run_keep_its_flat_memory_keys():
    from symphony.config import load_config
    from symphony.pipeline.runs import config_args

    old = load_config("tiny").to_dict()
    old["memory"] = {"kind": "titans", "pointer": True, "titans_pages": 2, "titans_hidden": 24, "holo_dim": 32,
                     "layers": "last:2", "chunk_size": 16}  # as a manifest written before the nested keys
    args = config_args(old)
    assert "memory.titans.pages=2" in args and "memory.titans.hidden=24" in args and "memory.kind=titans" in args
    rebuilt = load_config("tiny", [a for a in args[2:] if a != "--set"])
    assert (rebuilt.memory.titans.pages, rebuilt.memory.titans.hidden) == (2, 24)


def test_cli_reads_the_phase_registry():
    from click.testing import CliRunner

    from symphony.cli.main import main, pipeline
    from symphony.pipeline.phases import PHASES

    helptext = CliRunner().invoke(main, ["run-phase", "--help"]).stdout
    assert all(f"{p.number} {p.name}" in helptext for p in PHASES.values())
    ranges = {o.name: o.type for o in pipeline.params if o.name in ("first", "last")}
    assert all((t.min, t.max) == (min(PHASES), max(PHASES)) for t in ranges.values()) and len(ranges) == 2


def test_training_fingerprint_ignores_the_recall_archive_size():
    from symphony.config import load_config
    from symphony.pipeline.train import _trained_cache

    default = _trained_cache(load_config("tiny").to_dict()["cache"])
    bigger = _trained_cache(load_config("tiny", ["cache.recall_bytes=64MB"]).to_dict()["cache"])
    assert default == bigger
    assert default["recall_tokens"] == 32768 and "recall_bytes" not in default  # as runs before recall_bytes hashed it
