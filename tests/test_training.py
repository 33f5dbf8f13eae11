"""Phases 4-7 on the tiny model: the whole pipeline, exact resume after a kill, a loud stop on a non-finite
loss, prerequisites, and data-parallel training under `accelerate launch` matching one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import invoke
from symphony.pipeline.phases import get_phase
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.memory.checkpoint import ADAPTERS_FILE

MEMORY = ["memory.kind=fhrr", "memory.pointer=true", "memory.fhrr.holo_dim=32", "memory.chunk_size=16"]


def cfg_for(*extra):
    return load_config("tiny", [*MEMORY, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run directory with phases 1-3 done (shared; tests copy it)."""
    run = tmp_path_factory.mktemp("prepared") / "run"
    cfg = cfg_for()
    for n in (1, 2, 3):
        get_phase(n)(cfg, run, progress=False)
    return run


def copy_run(prepared, dst):
    shutil.copytree(prepared, dst)
    return dst


def adapters(path):
    return load_file(str(Path(path) / ADAPTERS_FILE))


def metrics(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def test_pipeline_end_to_end_cli(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in MEMORY for a in ("-s", s)]
    res = invoke("pipeline", "-c", "tiny", "-r", run, *sets)
    assert res.exit_code == 0, res.output
    for n in range(1, 8):
        assert (run / f"phase{n}" / "manifest.json").is_file()
    assert (run / "final" / ADAPTERS_FILE).is_file()
    assert "dev: nll" in res.output and "pipeline 1-7 done" in res.output
    m4 = json.loads((run / "phase4" / "manifest.json").read_text())
    m7 = json.loads((run / "phase7" / "manifest.json").read_text())
    assert m4["trainable_parameters"] > 0 and m4["training"]["last"]["step"] == 6
    assert m7["dev_after"]["nll"] < m4["dev_before"]["nll"]  # training moved the dev loss down
    stages = json.loads((run / "phase6" / "manifest.json").read_text())["stages"]
    assert [s["length"] for s in stages] == [None, 384, 768]  # the starting weights, then each stage
    assert not any((run / f"phase{n}" / "train_state").exists() for n in range(4, 8))
    assert all((run / f"phase{n}" / "loss.png").is_file() for n in range(4, 8))
    # a second pipeline run is a no-op; the final adapters load for evaluation
    res = invoke("pipeline", "-c", "tiny", "-r", run, "--from", "4", *sets)
    assert res.exit_code == 0 and res.output.count("up-to-date") == 4, res.output
    res = invoke("eval", "ppl", "-c", "tiny", "--max-tokens", 400, "--methods", "symphony",
                 "--out", tmp_path / "ppl", "--checkpoint", run)
    assert res.exit_code == 0, res.output


def test_each_phase_names_its_prerequisite(tmp_path, prepared):
    run = copy_run(prepared, tmp_path / "run")
    for n in (5, 6, 7):
        with pytest.raises(SymphonyError, match=f"run first: symphony run-phase {n - 1} --run-dir"):
            get_phase(n)(cfg_for(), run, progress=False)
    shutil.rmtree(run / "phase3")
    with pytest.raises(SymphonyError, match="run first: symphony run-phase 3 --run-dir"):
        get_phase(4)(cfg_for(), run, progress=False)


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, prepared):
    cfg = cfg_for("train.phase4_steps=5", "train.checkpoint_every=2")
    whole = copy_run(prepared, tmp_path / "whole")
    get_phase(4)(cfg, whole, progress=False)

    cut = copy_run(prepared, tmp_path / "cut")

    def kill(step, _record):
        if step == 3:
            raise Killed
    with pytest.raises(Killed):
        get_phase(4)(cfg, cut, progress=False, on_step=kill)
    assert (cut / "phase4" / "train_state" / "state.json").is_file()
    assert not (cut / "phase4" / "manifest.json").exists()  # incomplete phases have no manifest
    assert json.loads((cut / "phase4" / "train_state" / "state.json").read_text())["step"] == 2
    get_phase(4)(cfg, cut, progress=False)  # resumes from step 2
    a, b = adapters(whole / "phase4"), adapters(cut / "phase4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = metrics(whole / "phase4"), metrics(cut / "phase4")
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5]
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]


def test_non_finite_loss_stops_loudly_with_the_last_checkpoint(tmp_path, prepared, monkeypatch):
    import symphony.pipeline.loop as loop

    run = copy_run(prepared, tmp_path / "run")
    real = loop.stream_sample
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        st = real(*args, **kwargs)
        if calls["n"] == 3:
            st.nll = float("nan")
        return st
    monkeypatch.setattr(loop, "stream_sample", poisoned)
    stopped = r"loss is nan at step 3; last good checkpoint: .*phase4.*train_state"
    with pytest.raises(SymphonyError, match=stopped) as ei:
        get_phase(4)(cfg_for("train.checkpoint_every=2"), run, progress=False)
    assert f"run the phase again: symphony run-phase 4 --run-dir {run} -c tiny " in str(ei.value)
    assert "--set train.lr=0.0015" in str(ei.value)  # tiny's 0.003, halved
    assert not (run / "phase4" / "manifest.json").exists()


def test_changed_settings_need_force(tmp_path, prepared):
    run = copy_run(prepared, tmp_path / "run")
    get_phase(4)(cfg_for("train.phase4_steps=2"), run, progress=False)
    assert get_phase(4)(cfg_for("train.phase4_steps=2"), run, progress=False)["status"] == "up-to-date"
    with pytest.raises(SymphonyError, match="--force"):
        get_phase(4)(cfg_for("train.phase4_steps=3"), run, progress=False)
    assert get_phase(4)(cfg_for("train.phase4_steps=3"), run, force=True, progress=False)["status"] == "written"


def test_nothing_to_train_is_skipped_not_faked(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("tiny", ["memory.kind=fhrr", "memory.fhrr.holo_dim=32", "memory.pointer=false"])  # no pointer heads
    for n in (1, 2, 3, 4):
        get_phase(n)(cfg, run, progress=False)
    out = get_phase(5)(cfg, run, progress=False)
    assert out["status"] == "skipped" and "memory.pointer is off" in out["reason"]


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate launcher not installed")
def test_data_parallel_matches_one_process(tmp_path, prepared):
    """Two data-parallel CPU processes with batch 1 each == one process with batch 2. accelerate 1.15's
    `launch --cpu` always starts a single process; `--multi_gpu` starts torchrun workers, which our
    Accelerator(cpu=True) joins as MULTI_CPU (gloo) when no GPU is present."""
    steps = ["train.phase4_steps=3", "train.checkpoint_every=10"]
    single = copy_run(prepared, tmp_path / "single")
    get_phase(4)(cfg_for(*steps, "train.batch_size=2"), single, progress=False)

    ddp = copy_run(prepared, tmp_path / "ddp")
    launcher = str(Path(sys.executable).parent / "accelerate")
    sets = [a for s in [*MEMORY, *steps, "train.batch_size=1"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "symphony.cli.main",
                           "run-phase", "4", "-c", "tiny", "-r", str(ddp), *sets],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ms, md = metrics(single / "phase4"), metrics(ddp / "phase4")
    assert [m["step"] for m in md] == [1, 2, 3]
    for a, b in zip(ms, md):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(a["loss"]))
    a, b = adapters(single / "phase4"), adapters(ddp / "phase4")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_copy_head_learns_from_a_closed_gate_and_its_gate_stays_in_range(tmp_path, prepared):
    """Phase 5 supervises the copy distribution directly (pointer loss), so the copy head's query/key
    projections learn while the gate is still 0; the gate scale is projected back into [0, 1] after
    every step instead of dying below 0."""
    run = copy_run(prepared, tmp_path / "run")
    cfg = cfg_for("train.phase4_steps=1", "train.phase5_steps=4")
    get_phase(4)(cfg, run, progress=False)
    get_phase(5)(cfg, run, progress=False)
    before, after = adapters(run / "phase4"), adapters(run / "phase5")
    for key in ("symphony_pointer.copy_head.q.weight", "symphony_pointer.copy_head.k.weight"):
        assert not torch.equal(before[key], after[key])
    assert 0.0 <= float(after["symphony_pointer.copy_head.gate_scale"]) <= 1.0


def test_gate_scale_projection():
    from symphony.memory.pointer import CopyHead

    head = CopyHead(8, 8)
    with torch.no_grad():
        head.gate_scale.fill_(-0.3)
    head.project_()
    assert head.gate_scale.item() == 0.0
    with torch.no_grad():
        head.gate_scale.fill_(1.7)
    head.project_()
    assert head.gate_scale.item() == 1.0


def test_copy_head_off_trains_the_router_only(tmp_path):
    """`memory.copy_head=false` from phase 2 on: phase 5 trains the salience router, leaves the copy head as
    injected and its gate shut, so the exported adapters decode with the LM alone."""
    run = tmp_path / "run"
    cfg = cfg_for("memory.copy_head=false", "train.phase4_steps=1", "train.phase5_steps=3")
    for n in (1, 2, 3, 4, 5):
        get_phase(n)(cfg, run, progress=False)
    before, after = adapters(run / "phase4"), adapters(run / "phase5")
    copy_keys = [k for k in after if ".copy_head." in k]
    router_keys = [k for k in after if ".router." in k]
    assert copy_keys and router_keys
    assert all(torch.equal(before[k], after[k]) for k in copy_keys)
    assert any(not torch.equal(before[k], after[k]) for k in router_keys)
    assert float(after["symphony_pointer.copy_head.gate_scale"]) == 0.0
    assert json.loads((run / "phase5" / "manifest.json").read_text())["use_copy"] is False


def test_phase5_trains_the_retriever_and_calibrates_it_on_dev(tmp_path):
    """`memory.retriever_dim > 0`: phase 5 reads the facts phase 3 planted, trains the projection alone (the
    other adapters as phase 4 left them when nothing else trains) and sets its threshold from the dev split."""
    run = tmp_path / "run"
    cfg = load_config("tiny", ["memory.kind=fhrr", "memory.fhrr.holo_dim=32", "memory.pointer=false",
                               "memory.retriever_dim=16", "memory.retriever_layer=1", "train.phase4_steps=1",
                               "train.retriever_steps=20"])
    for n in (1, 2, 3, 4):
        get_phase(n)(cfg, run, progress=False)
    out = get_phase(5)(cfg, run, progress=False)
    assert out["status"] == "written"
    report = json.loads((run / "phase5" / "manifest.json").read_text())["retriever"]
    assert report["steps"] == 20 and report["loss_last"] < report["loss_first"]
    assert report["calibrated_on"].startswith("dev") and report["calibration"]["examples"] > 0
    before, after = adapters(run / "phase4"), adapters(run / "phase5")
    assert not torch.equal(before["symphony_retriever.proj.weight"], after["symphony_retriever.proj.weight"])
    assert float(after["symphony_retriever.min_similarity"]) == pytest.approx(report["calibration"]["min_similarity"], abs=1e-4)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("symphony_retriever."))
    from symphony.memory.checkpoint import load_retriever
    from symphony.memory.inject import retriever_of
    from symphony.models import load_model

    bare = load_model(cfg.model, seed=cfg.seed).model  # the retriever alone, as it ships
    load_retriever(bare, run / "phase5" / "retriever.safetensors", cfg.model.name)
    assert torch.equal(retriever_of(bare).proj.weight, after["symphony_retriever.proj.weight"])
