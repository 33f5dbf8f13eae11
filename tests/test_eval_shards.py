"""Evals split across processes (`symphony/evaluation/shards.py`): the cell split, the merge, the shard store's
protocol (simulated ranks in one process), refusals, and `accelerate launch` with two CPU processes writing
the same needle.json as one process, resumable after an interruption."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import symphony.evaluation.shards as shards
from symphony.errors import SymphonyError
from symphony.evaluation.needle import deal_order
from symphony.evaluation.shards import (ShardedResults, World, current_world, merge_rows, shard_path, shard_paths,
                                        split_cells)
from symphony.io import atomic_write_json, read_json

KEYS = ("m", "n")
CELLS = [(m, n) for n in (1, 2, 3) for m in ("a", "b")]  # the order one process runs them


# -- pure pieces -------------------------------------------------------------------------------------
def test_split_deals_every_cell_to_exactly_one_process_evenly():
    cells = list(range(11))
    for size in (1, 2, 3, 5, 11, 16):
        parts = [split_cells(cells, World(r, size)) for r in range(size)]
        assert sorted(c for p in parts for c in p) == cells
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert split_cells(cells, World()) == cells


def test_needle_deal_gives_every_process_every_method():
    """With as many processes as methods, a plain deal would give each process one method (and methods differ
    in cost by orders of magnitude)."""
    grid = [(1024, d, 0) for d in (0, 25, 50, 75)]
    methods = ["full", "sinks"]
    deal = deal_order(grid, methods)
    assert sorted(deal) == sorted((m, *cell) for cell in grid for m in methods)
    for rank in range(2):
        assert {c[0] for c in split_cells(deal, World(rank, 2))} == set(methods)


def test_merge_keeps_earlier_rows_then_cell_order():
    key = lambda r: (r["m"], r["n"])  # noqa: E731
    before = [{"m": "b", "n": 2, "v": "earlier run"}]
    rank0 = [{"m": "a", "n": 1}, {"m": "a", "n": 2}]
    rank1 = [{"m": "b", "n": 1}, {"m": "b", "n": 2, "v": "again"}, {"m": "z", "n": 9}]
    rows = merge_rows(before, [*rank1, *rank0], key, CELLS)
    assert [key(r) for r in rows] == [("b", 2), ("a", 1), ("b", 1), ("a", 2), ("z", 9)]  # unknown cells last
    assert rows[0]["v"] == "earlier run"


def test_shard_paths_by_rank(tmp_path):
    path = tmp_path / "needle.json"
    for name in ("needle.shard-10.json", "needle.shard-2.json", "needle.shard-x.json", "ppl.shard-0.json"):
        (tmp_path / name).write_text("{}")
    assert shard_paths(path) == [shard_path(path, 2), shard_path(path, 10)]


def test_world_from_the_launcher_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert current_world() == World(0, 1, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert current_world() == World(3, 4, 1, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(SymphonyError, match="inconsistent launcher environment"):
        current_world()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(SymphonyError, match="RANK='one' is not a whole number"):
        current_world()


def test_each_process_gets_its_own_gpu_and_a_share_of_the_memory(tiny_cfg, monkeypatch):
    import torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for asked in ("cuda", "auto"):
        tiny_cfg.model.device = asked
        cfg = shards.process_config(tiny_cfg, World(3, 4, 1, 2))
        assert cfg.model.device == "cuda:1" and tiny_cfg.model.device == asked  # a copy
    assert chosen == [1, 1]
    assert shards.process_config(tiny_cfg, World()) is tiny_cfg  # one process: as configured
    tiny_cfg.model.device = "cpu"
    assert shards.process_config(tiny_cfg, World(1, 2, 1, 2)) is tiny_cfg
    # the default memory limit is split between the processes drawing on the same memory
    world = World(0, 6, 0, 3)
    assert shards.processes_on_device(torch.device("cpu"), world) == 3  # one RAM
    assert shards.processes_on_device(torch.device("cuda:0"), world) == 2  # local ranks 0 and 2
    assert shards.processes_on_device(torch.device("cuda:1"), world) == 1
    assert shards.processes_on_device(torch.device("cpu"), World()) == 1


# -- the store, ranks simulated in one process -------------------------------------------------------
@pytest.fixture
def no_barrier(monkeypatch):
    """Ranks run one after another here; the test calls them in an order the barriers allow."""
    monkeypatch.setattr(shards, "barrier", lambda world: None)


def open_store(path, world, cells=CELLS, resume=False):
    store = ShardedResults(path, KEYS, cells, resume=resume, sections=("per",),
                           derive=lambda rows: {"count": len(rows)}, world=world)
    store.meta.update(suite="toy", world=world.size)
    return store


def run(store, upto=None):
    """Run this process's unfinished cells (the first `upto` of them: an interrupted process)."""
    for m, n in store.mine[:upto]:
        if not store.has(m=m, n=n):
            store.section("per")[m] = m.upper()
            store.add({"m": m, "n": n, "v": f"{m}{n}"})


def one_process(path, cells=CELLS, resume=False):
    store = open_store(path, World(), cells, resume)
    run(store)
    assert store.finish()
    return read_json(path)


def processes(path, size, cells=CELLS, resume=False):
    stores = [open_store(path, World(r, size, r, size), cells, resume) for r in range(size)]  # all open first
    for store in stores:
        run(store)
    assert [s.finish() for s in reversed(stores)] == [False] * (size - 1) + [True]  # rank 0 merges last
    return read_json(path)


def same_rows(a, b):
    assert a["rows"] == b["rows"]
    assert a["per"] == b["per"] and list(a["per"]) == list(b["per"])
    assert a["count"] == b["count"] == len(a["rows"])


def test_shards_merge_into_what_one_process_writes(tmp_path, no_barrier):
    one = one_process(tmp_path / "one" / "r.json")
    for size in (2, 3, 7):  # 7: more processes than cells, some with none
        path = tmp_path / f"x{size}" / "r.json"
        same_rows(processes(path, size), one)
        assert shard_paths(path) == []  # merged, then removed


def test_a_resumed_run_adds_cells_after_the_earlier_rows(tmp_path, no_barrier):
    more = CELLS + [(m, 4) for m in ("a", "b")]
    one = tmp_path / "one" / "r.json"
    one_process(one)
    single = one_process(one, more, resume=True)
    two = tmp_path / "two" / "r.json"
    processes(two, 2)
    same_rows(processes(two, 2, more, resume=True), single)


def test_an_interrupted_run_resumes_with_another_number_of_processes(tmp_path, no_barrier):
    path = tmp_path / "r.json"
    stores = [open_store(path, World(r, 3, r, 3)) for r in range(3)]
    run(stores[0])
    run(stores[2], upto=1)  # rank 2 stopped after one cell, rank 1 before any; nothing merged
    assert not path.exists() and len(shard_paths(path)) == 2
    with pytest.raises(SymphonyError, match=r"r\.shard-0\.json exists .* pass --resume"):
        open_store(path, World())
    finished = one_process(path, resume=True)
    same_rows(finished, one_process(tmp_path / "one" / "r.json"))
    assert shard_paths(path) == []


def test_a_shard_out_of_reach_is_a_clear_error(tmp_path, no_barrier):
    path = tmp_path / "r.json"
    rank0, _rank1 = (open_store(path, World(r, 2, r, 2)) for r in range(2))
    run(rank0)  # rank 1 wrote its shard on another machine's disk: rank 0 cannot see it
    with pytest.raises(SymphonyError, match="process.es. 1 are not in .*--out must be a folder they all share"):
        rank0.finish()


def test_suites_that_must_not_be_split_refuse_under_a_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")  # rank 0 prints the error line; the others exit 2 quietly
    monkeypatch.setenv("WORLD_SIZE", "2")
    for suite in ("oom", "integrity"):
        line = helpers.one_line_error(helpers.invoke("eval", suite, "-c", "tiny", "-o", tmp_path / suite))
        assert f"eval {suite}" in line and "without accelerate launch" in line
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    line = helpers.one_line_error(helpers.invoke("eval", "needle", "-c", "tiny", "-o", tmp_path / "needle"))
    assert "MASTER_ADDR and MASTER_PORT not set" in line


# -- accelerate launch, two CPU processes ------------------------------------------------------------
LAUNCHER = Path(sys.executable).parent / "accelerate"
NEEDLE = ["eval", "needle", "-c", "tiny", "--methods", "sinks,symphony", "--lengths", "1k", "--depths", "0,50"]
COMPARED = ("method", "context_len", "depth", "trial", "expected", "generated", "correct")


def launch(*args):
    """`accelerate launch --multi_gpu --num_processes 2 -m symphony.cli.main ARGS` on CPU (as
    test_training's data-parallel test: torchrun workers joined over gloo), on a free port so concurrent
    launches do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(LAUNCHER), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
                           "-m", "symphony.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def compared(path):
    return [{k: r[k] for k in COMPARED} for r in read_json(path)["rows"]]


@pytest.mark.skipif(shutil.which("accelerate", path=str(LAUNCHER.parent)) is None,
                    reason="accelerate launcher not installed")
def test_two_processes_write_what_one_process_writes_and_resume(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    res = helpers.invoke(*NEEDLE, "-o", one)
    assert res.exit_code == 0, res.output
    expected = compared(one / "needle.json")
    assert len(expected) == 4

    proc = launch(*NEEDLE, "-o", two)
    assert compared(two / "needle.json") == expected
    assert proc.stdout.count("needle accuracy by context length") == 1  # rank 0 reports, rank 1 is silent
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # same plots, no shards

    # an interrupted run: rank 0's shard written, rank 1's lost, nothing merged yet
    body = read_json(two / "needle.json")
    grid = [(1024, d, 0) for d in (0, 50)]
    ours = set(split_cells(deal_order(grid, ["sinks", "symphony"]), World(0, 2)))
    kept = [{**r, "seconds": -1.0} for r in body["rows"]
            if (r["method"], r["context_len"], r["depth"], r["trial"]) in ours]
    atomic_write_json(shard_path(two / "needle.json", 0), {**{k: v for k, v in body.items() if k != "summary"},
                                                           "rows": kept})
    (two / "needle.json").unlink()
    launch(*NEEDLE, "-o", two, "--resume")
    rows = read_json(two / "needle.json")["rows"]
    assert compared(two / "needle.json") == expected
    assert sum(r["seconds"] == -1.0 for r in rows) == len(kept) == 2  # rank 0's rows kept, not redone
    assert shard_paths(two / "needle.json") == []
    assert json.loads((two / "needle.json").read_text())["summary"]["sinks"]["trials"] == 2


def test_other_ranks_exit_without_repeating_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = helpers.invoke("eval", "oom", "-c", "tiny", "-o", tmp_path / "oom")
    assert res.exit_code == 2 and "Traceback" not in res.output and res.stderr.strip() == ""
