"""Run directories under attack or accident: a crafted resume point never runs code, a failed --force redo keeps
the previous phase, a stale final/ is refused, recovery hints run as printed, and a pipeline that would train
nothing is refused before it starts (while `-c tiny` trains every phase and exports final/)."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from helpers import invoke, one_line_error
from symphony.pipeline.phases import get_phase
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.memory.checkpoint import ADAPTERS_FILE, find_checkpoint, load_adapters, load_checkpoint
from symphony.memory.inject import inject
from symphony.models.tiny import tiny_model
from symphony.pipeline.runs import config_args, manifest_path, phase_command, phase_dir, read_manifest
from symphony.pipeline.loop import RUNNING_METRICS, STATE_DIR, load_train_state, save_train_state
from symphony.pipeline.train import check_pipeline_trains

FAST = ["train.max_steps=2"]


def tiny(*extra):
    return load_config("tiny", [*FAST, *extra])


def run_phases(cfg, run, phases, force=False):
    return [get_phase(n)(cfg, run, force=force, progress=False) for n in phases]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under `d` (relative name -> bytes)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`symphony pipeline -c tiny` (every phase, capped at 2 steps), checked first as the command checks it."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = tiny()
    check_pipeline_trains(cfg, run, 1, 7)
    results = run_phases(cfg, run, range(1, 8))
    return run, results


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- 1. a resume point is data, never code -----------------------------------------------------------

def _model_and_optimizer():
    model = tiny_model("tiny-llama", seed=0)
    inject(model, tiny().memory)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=1e-3)


def test_resume_point_round_trips_optimizer_and_rng(tmp_path):
    model, params, opt = _model_and_optimizer()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    save_train_state(model, opt, tmp_path, 3, "fp", {"k": 1})
    assert (tmp_path / STATE_DIR / "optimizer.pt").is_file()

    other, _, fresh = _model_and_optimizer()
    torch.manual_seed(999)
    step, extra, best = load_train_state(other, fresh, tmp_path, "fp")
    assert (step, extra, best) == (3, {"k": 1}, None)
    assert torch.equal(torch.get_rng_state(), rng)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][key])


class _Payload:
    """Unpickling this runs `open(path, "w")`: the file appearing proves the pickle's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_crafted_optimizer_pickle_is_refused_and_never_runs(tmp_path):
    model, params, opt = _model_and_optimizer()
    save_train_state(model, opt, tmp_path, 2, "fp", None)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker), "rng": torch.get_rng_state()},
               tmp_path / STATE_DIR / "optimizer.pt")
    with pytest.raises(SymphonyError) as ei:
        load_train_state(model, opt, tmp_path, "fp")
    msg = str(ei.value)
    assert not marker.exists(), "the crafted pickle ran code"
    assert "\n" not in msg and "corrupt or unsafe" in msg and f"rm -r {tmp_path / STATE_DIR}" in msg


def test_resume_point_with_wrong_contents_is_one_line(tmp_path):
    model, _, opt = _model_and_optimizer()
    save_train_state(model, opt, tmp_path, 2, "fp", None)
    torch.save({"optimizer": [1, 2], "rng": torch.get_rng_state()}, tmp_path / STATE_DIR / "optimizer.pt")
    with pytest.raises(SymphonyError, match="is corrupt or unsafe .*; delete it .*rm -r"):
        load_train_state(model, opt, tmp_path, "fp")


# ---- 2. a failed --force keeps the previous phase ----------------------------------------------------

class Boom(Exception):
    pass


def test_failed_forced_training_phase_keeps_the_previous_one(tmp_path, pipeline_run, monkeypatch):
    import symphony.pipeline.loop as loop

    run = copy_run(pipeline_run[0], tmp_path / "run")
    before = snapshot(phase_dir(run, 4))
    assert {"manifest.json", ADAPTERS_FILE, "metrics.jsonl", "loss.png"} <= set(before)
    calls = {"n": 0}
    real = loop.stream_sample

    def dies_on_the_third_sample(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "stream_sample", dies_on_the_third_sample)
    redo = tiny("train.max_steps=3", "train.checkpoint_every=2")
    with pytest.raises(Boom):
        get_phase(4)(redo, run, force=True, progress=False)
    after = snapshot(phase_dir(run, 4))
    in_progress = {k for k in after if k.startswith(STATE_DIR) or k == RUNNING_METRICS}  # the redo's resume point
    assert {k: v for k, v in after.items() if k not in in_progress} == before
    read_manifest(run, 4)
    load_checkpoint(tiny_model("tiny-llama", seed=0), phase_dir(run, 4))  # sha256 and keys still match

    # the interrupted redo resumes without --force, then replaces the phase as a whole
    monkeypatch.setattr(loop, "stream_sample", real)
    assert get_phase(4)(redo, run, progress=False)["status"] == "written"
    assert not (phase_dir(run, 4) / STATE_DIR).exists()
    assert [m["step"] for m in map(json.loads, (phase_dir(run, 4) / "metrics.jsonl").read_text().splitlines())] \
        == [1, 2, 3]


def test_failed_forced_phase2_keeps_the_previous_one(tmp_path, pipeline_run, monkeypatch):
    import symphony.memory.checkpoint as checkpoint_module

    run = copy_run(pipeline_run[0], tmp_path / "run")
    before = snapshot(phase_dir(run, 2))

    def no_manifest(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", no_manifest)  # after the adapters file is written
    with pytest.raises(Boom):
        get_phase(2)(tiny("memory.kind=titans"), run, force=True, progress=False)  # other adapters
    assert snapshot(phase_dir(run, 2)) == before
    assert not any(p.name.startswith(".phase2") for p in run.iterdir())


def test_failed_forced_phase3_keeps_the_previous_one(tmp_path, pipeline_run, monkeypatch):
    import symphony.pipeline.dataset as build

    run = copy_run(pipeline_run[0], tmp_path / "run")
    before = snapshot(phase_dir(run, 3))

    def no_manifest(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(build, "write_manifest", no_manifest)  # both new splits are complete by then
    with pytest.raises(Boom):
        get_phase(3)(tiny("data.train_samples=5"), run, force=True, progress=False)
    assert snapshot(phase_dir(run, 3)) == before
    assert not any(p.name.startswith(".phase3") for p in run.iterdir())


# ---- 3. a stale final/ is refused ---------------------------------------------------------------------

def test_tiny_pipeline_trains_every_phase_and_exports_final(pipeline_run):
    run, results = pipeline_run
    assert [r["status"] for r in results] == ["written"] * 7
    assert all(r["trainable_parameters"] > 0 for r in results[3:])
    assert find_checkpoint(run) == run / "final"
    final = json.loads((run / "final" / "manifest.json").read_text())
    assert final["adapters"]["sha256"] == results[6]["adapters"]["sha256"]


def test_final_made_before_an_earlier_phase_was_redone_is_refused(tmp_path, pipeline_run):
    run = copy_run(pipeline_run[0], tmp_path / "run")
    run_phases(tiny("train.max_steps=1"), run, [5], force=True)  # other weights for phase 5
    with pytest.raises(SymphonyError) as ei:
        find_checkpoint(run)
    msg = str(ei.value)
    assert "\n" not in msg and f"{run / 'final'} is stale" in msg and str(run / "phase5") in msg
    assert f"symphony pipeline --from 6 --run-dir {run} -c tiny" in msg and msg.endswith(f"pass {run / 'phase5'} "
                                                                                        "to use the redone phase")
    assert find_checkpoint(run / "phase5") == run / "phase5"  # named directly, it is taken as is
    # the later phases must be redone too: without --force phase 6 says so
    with pytest.raises(SymphonyError, match="other earlier phases.*run-phase 6 .*--force"):
        run_phases(tiny(), run, [6])
    # the printed command repairs the run
    args = shlex.split(msg.split("redo phases 6-7: ")[1].split(", or pass")[0])
    assert args[0] == "symphony"
    res = invoke(*args[1:])
    assert res.exit_code == 0, res.output
    assert find_checkpoint(run) == run / "final"


def test_final_not_matching_a_redone_phase7_is_refused(tmp_path, pipeline_run, monkeypatch):
    import symphony.pipeline.train as phases

    run = copy_run(pipeline_run[0], tmp_path / "run")
    real = phases.staged_dir

    def final_export_fails(dst):
        if Path(dst).name == "final":
            raise Boom
        return real(dst)

    monkeypatch.setattr(phases, "staged_dir", final_export_fails)
    with pytest.raises(Boom):
        run_phases(tiny("train.max_steps=1"), run, [7], force=True)
    with pytest.raises(SymphonyError) as ei:
        find_checkpoint(run)
    msg = str(ei.value)
    assert "\n" not in msg and "phase 7 was redone after final/ was exported" in msg
    assert f"symphony run-phase 7 --run-dir {run} -c tiny" in msg and "--force" in msg


# ---- 4. recovery hints run as printed ---------------------------------------------------------------

def test_config_args_rebuild_the_config():
    cfg = load_config("tiny", ["train.max_steps=3", "memory.layers=last:1", "data.tasks=lm,needle",
                               "memory.checkpoint=a dir/with space", "memory.pointer=false", "train.lr=1e-05",
                               "seed=4", "data.source=null"])
    args = config_args(cfg)
    assert args[:2] == ["-c", "tiny"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert load_config(args[1], sets) == cfg
    assert config_args(load_config("tiny")) == ["-c", "tiny"]


def test_missing_prerequisite_hint_has_run_dir_and_config_and_runs(tmp_path):
    run = tmp_path / "run dir"  # a space: the hint is shell-quoted
    line = one_line_error(invoke("run-phase", 3, "-c", "tiny", "-r", run, "--set", "calibration.tokens=64"))
    hint = line.split("run first: ")[1]
    assert hint == f"symphony run-phase 1 --run-dir '{run}' -c tiny --set calibration.tokens=64"
    args = shlex.split(hint)
    res = invoke(*args[1:])
    assert res.exit_code == 0, res.output
    assert read_manifest(run, 1)["config"] == load_config("tiny", ["calibration.tokens=64"]).to_dict()


def test_corrupt_manifest_and_adapter_hints_name_the_run_config(tmp_path, pipeline_run):
    run = copy_run(pipeline_run[0], tmp_path / "run")
    expect = f"--run-dir {run} -c tiny --set train.max_steps=2"
    manifest_path(run, 3).write_text("{ not json")
    with pytest.raises(SymphonyError) as ei:
        read_manifest(run, 3)
    assert f"re-run: symphony run-phase 3 {expect} --force" in str(ei.value)
    path = phase_dir(run, 5) / ADAPTERS_FILE
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(SymphonyError) as ei:
        load_adapters(tiny_model("tiny-llama", seed=0), phase_dir(run, 5))
    assert f"rebuild it: symphony run-phase 5 {expect} --force" in str(ei.value)
    assert phase_command(run, 6) == f"symphony run-phase 6 {expect}"


# ---- 5. a pipeline that would train nothing is refused at the start ---------------------------------

def test_pipeline_without_a_memory_is_refused_at_the_start(tmp_path):
    cfg = load_config("smollm2-135m")  # the default preset: memory.kind none
    with pytest.raises(SymphonyError) as ei:
        check_pipeline_trains(cfg, tmp_path, 1, 7)
    msg = str(ei.value)
    assert "\n" not in msg and "memory.kind is none" in msg and "final/" in msg and "--to 3" in msg
    assert f"symphony pipeline --run-dir {tmp_path} -c smollm2-135m --set memory.kind=titans --set " \
           "memory.pointer=true" in msg and "-c smollm2-135m-cpu" in msg
    check_pipeline_trains(cfg, tmp_path, 1, 3)  # stops before phase 4: fine
    check_pipeline_trains(load_config("smollm2-135m-cpu"), tmp_path, 1, 7)
    check_pipeline_trains(load_config("tiny", ["memory.kind=none"]), tmp_path, 1, 7)  # pointer heads train
    with pytest.raises(SymphonyError, match="memory.kind is none"):
        check_pipeline_trains(load_config("tiny", ["memory.kind=none", "memory.pointer=false"]), tmp_path, 1, 7)


def test_pipeline_from_a_phase2_without_memory_names_its_rebuild(tmp_path):
    none = load_config("tiny", ["memory.kind=none", "memory.pointer=false"])
    manifest_path(tmp_path, 2).parent.mkdir(parents=True)
    manifest_path(tmp_path, 2).write_text(json.dumps({"phase": 2, "config": none.to_dict()}))
    with pytest.raises(SymphonyError) as ei:
        check_pipeline_trains(tiny(), tmp_path, 4, 7)  # phases 4-7 take phase 2's memory, not this config's
    msg = str(ei.value)
    assert f"memory.kind is none in {phase_dir(tmp_path, 2)}" in msg
    assert f"symphony pipeline --from 2 --run-dir {tmp_path} -c tiny" in msg and msg.count("--force") == 1
