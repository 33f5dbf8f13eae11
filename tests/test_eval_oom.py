"""OOM stress suite: the command end to end on the tiny model (real worker processes), and its decisions
(memory limit, time limit, resume, failed workers) with a counted stand-in for the worker."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from symphony.cli.main import main
from symphony.evaluation import oom

SCHEMA = {"method", "context_len", "peak_mem_bytes", "cache_bytes", "ingest_tok_s", "decode_ms_per_tok", "status"}
# sinks a multiple of span_len: the ledger holds whole spans only, so it fills to exactly its budget
TINY = ["-c", "tiny", "--set", "cache.sinks=8"]
KV_PER_TOKEN = 512  # tiny-llama: 2 layers x 2 KV heads x 16 dims x K,V x fp32


def _invoke(*args):
    return CliRunner().invoke(main, ["eval", "oom", *TINY, *args])


def _rows(out):
    return {(r["method"], r["context_len"]): r for r in json.loads((out / "oom.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oom") / "real"
    r = _invoke("--lengths", "256,1024", "--methods", "full,symphony", "--decode-tokens", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out, r.output


class FakeWorker:
    """Stands in for the worker process: counts calls and returns plausible measurements
    (ingest at 1000 tok/s; full's cache grows with the length, the bounded ones' does not)."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def __call__(self, spec):
        m, n = spec["method"], spec["length"]
        self.calls.append((m, n))
        slots = n if m == "full" else min(n, 200)
        return {"status": "ok", "peak_mem_bytes": 400 << 20, "cache_bytes": slots * KV_PER_TOKEN,
                "ingest_tok_s": 1000.0, "decode_ms_per_tok": 5.0, "ingest_s": n / 1000, "tokens_seen": n,
                "cache_slots": slots}


@pytest.fixture
def fake(monkeypatch):
    worker = FakeWorker()
    monkeypatch.setattr(oom, "run_worker", worker)
    return worker


# -- end to end, real workers ------------------------------------------------------------------

def test_end_to_end_schema_and_plot(real_run):
    out, output = real_run
    body = json.loads((out / "oom.json").read_text())
    assert body["model"] == "tiny-llama" and body["config"]["cache"]["sinks"] == 8
    assert body["memory_limit"] > 0
    rows = body["rows"]
    assert [(r["method"], r["context_len"]) for r in rows] == [
        ("full", 256), ("symphony", 256), ("full", 1024), ("symphony", 1024)]  # lengths ascending
    for r in rows:
        assert SCHEMA <= set(r)
        assert r["status"] == "ok", r
        assert r["peak_mem_bytes"] > 50 << 20  # a whole process: the runtime and the weights
        assert r["ingest_tok_s"] > 0 and r["decode_ms_per_tok"] > 0
        assert r["tokens_seen"] == r["context_len"]
        if sys.platform.startswith("linux"):  # the peak after loading is part of the whole worker's peak
            assert 0 < r["stream_peak_bytes"] <= r["peak_mem_bytes"]
    png = (out / "oom.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "method" in output and "symphony" in output and "oom.json" in output  # the table


def test_cache_bytes_bounded_for_symphony_growing_for_full(real_run):
    rows = _rows(real_run[0])
    capacity = 8 + 64 + 128
    # past its capacity Symphony's cache is the same size at every length
    assert rows["symphony", 256]["cache_bytes"] == rows["symphony", 1024]["cache_bytes"] == capacity * KV_PER_TOKEN
    assert rows["full", 256]["cache_bytes"] == 256 * KV_PER_TOKEN
    assert rows["full", 1024]["cache_bytes"] == 1024 * KV_PER_TOKEN


def test_existing_results_need_resume(real_run):
    r = _invoke("--lengths", "256", "--methods", "full", "--out", str(real_run[0]))
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0]


def test_resume_keeps_measured_cells(real_run, tmp_path, fake):
    out = tmp_path / "resumed"
    shutil.copytree(real_run[0], out)
    before = _rows(out)
    r = _invoke("--lengths", "256,512,1024", "--methods", "full,symphony", "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("full", 512), ("symphony", 512)]  # only the new length ran
    after = _rows(out)
    for key, row in before.items():
        assert after[key] == row  # the real measurements are untouched
    assert after["full", 512]["cache_bytes"] == 512 * KV_PER_TOKEN


# -- decisions, counted stand-in worker ---------------------------------------------------------

def test_resume_after_partial_file(tmp_path, fake):
    out = tmp_path / "o"
    r = _invoke("--lengths", "256", "--methods", "full,sinks,symphony", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert len(fake.calls) == 3
    # an interruption after one cell of the next length: write what a killed run would have left
    body = json.loads((out / "oom.json").read_text())
    partial = dict(body["rows"][0], context_len=512, peak_mem_bytes=123)
    body["rows"].append(partial)
    (out / "oom.json").write_text(json.dumps(body))
    fake.calls.clear()
    r = _invoke("--lengths", "256,512", "--methods", "full,sinks,symphony", "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("sinks", 512), ("symphony", 512)]
    assert _rows(out)["full", 512]["peak_mem_bytes"] == 123
    assert len(_rows(out)) == 6


def test_resume_refuses_a_different_config(tmp_path, fake):
    out = tmp_path / "o"
    assert _invoke("--lengths", "256", "--methods", "full", "--out", str(out)).exit_code == 0
    r = _invoke("--lengths", "256", "--methods", "full", "--out", str(out), "--resume", "--set", "cache.window=64")
    assert r.exit_code == 2 and "different config" in r.output


def test_memory_limit_records_over_limit_without_running(tmp_path, fake):
    out = tmp_path / "o"
    r = _invoke("--lengths", "256,1024", "--methods", "full,sinks,symphony", "--memory-limit", "1MB",
                "--out", str(out))
    assert r.exit_code == 0, r.output
    assert fake.calls == []
    rows = _rows(out)
    assert len(rows) == 6
    for row in rows.values():
        assert row["status"] == "over_limit"
        assert row["projected_bytes"] > 1 << 20
        assert row["peak_mem_bytes"] is None and SCHEMA <= set(row)
    assert rows["full", 1024]["projected_bytes"] > rows["full", 256]["projected_bytes"]
    assert rows["symphony", 1024]["projected_bytes"] == rows["symphony", 256]["projected_bytes"]
    assert (out / "oom.png").exists()
    assert json.loads((out / "oom.json").read_text())["memory_limit"] == 1 << 20
    # over_limit is a decision, not a measurement: a resumed run with room for them measures them
    r = _invoke("--lengths", "256,1024", "--methods", "full,sinks,symphony", "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert len(fake.calls) == 6 and all(row["status"] == "ok" for row in _rows(out).values())


def test_projected_memory_uses_the_measured_base(tmp_path, fake):
    out = tmp_path / "o"
    # the first cell is estimated (weights x 1.5 + 300 MB fits), later ones project from its 400 MB peak
    r = _invoke("--lengths", "256,1024", "--methods", "full", "--memory-limit", "400.2MB", "--out", str(out))
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows["full", 256]["status"] == "ok"
    assert rows["full", 1024]["status"] == "over_limit"  # 400 MB - its cache + 1088 slots + activations
    assert fake.calls == [("full", 256)]


def test_time_limit_skips_with_projected_seconds(tmp_path, fake):
    out = tmp_path / "o"
    # measured: 0.256 s at 256 tokens. At 1024: full ~ 0.256 x 16 = 4.1 s, bounded ~ 0.256 x 4 = 1.0 s
    r = _invoke("--lengths", "256,1024", "--methods", "full,symphony", "--time-limit", "2", "--decode-tokens", "2",
                "--out", str(out))
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows["full", 1024]["status"] == "skipped_time"
    assert rows["full", 1024]["projected_s"] == pytest.approx(4.096 + 0.04, abs=0.1)
    assert rows["symphony", 1024]["status"] == "ok"
    assert fake.calls == [("full", 256), ("symphony", 256), ("symphony", 1024)]
    assert "skipped_time" in r.output


def test_failed_worker_is_recorded(tmp_path, monkeypatch):
    script = "import sys; sys.stderr.write('loading\\nRuntimeError: boom at 1024\\n'); sys.exit(3)"
    monkeypatch.setattr(oom, "worker_command", lambda: [sys.executable, "-c", script])
    out = tmp_path / "o"
    r = _invoke("--lengths", "256", "--methods", "full", "--out", str(out))
    assert r.exit_code == 0, r.output
    row = _rows(out)["full", 256]
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom at 1024"
    assert row["peak_mem_bytes"] is None and SCHEMA <= set(row)


def test_killed_worker_is_recorded(tmp_path, monkeypatch):
    if sys.platform == "win32":
        pytest.skip("POSIX signals")
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(oom, "worker_command", lambda: [sys.executable, "-c", script])
    out = tmp_path / "o"
    r = _invoke("--lengths", "256", "--methods", "symphony", "--out", str(out))
    assert r.exit_code == 0, r.output
    row = _rows(out)["symphony", 256]
    assert row["status"] == "failed" and "SIGKILL" in row["error"]


def test_worker_env_returns_freed_memory_and_keeps_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = oom.worker_env()
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576" and env["OMP_NUM_THREADS"] == "1"


def test_worker_tokenises_the_same_stream_from_a_prefix():
    from symphony.corpus import builtin_text, token_stream
    from symphony.evaluation.oom_worker import corpus_ids
    from symphony.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    for n in (1, 3000, 20_000):
        assert corpus_ids(tok, n) == token_stream(tok, builtin_text(), n)


def test_bad_lengths_is_one_line_error(tmp_path):
    r = _invoke("--lengths", "4x", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "cannot read length" in r.output


def test_lengths_read_k_and_m_suffixes():
    from symphony.evaluation.methods import parse_lengths

    assert parse_lengths("4k, 1M,1.5k,4096") == [4096, 1024 * 1024, 1536, 4096]
