"""Atomic writes: permissions as open() gives them, plots written atomically, orphaned temp files cleaned,
unwritable or full locations reported in one line with the previous file kept."""
from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from symphony import io
from symphony.errors import SymphonyError
from symphony.io import atomic_savefig, atomic_write_json, atomic_write_text, ensure_writable_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- permissions -------------------------------------------------------------------------------------
def test_new_files_honour_the_umask(tmp_path, umask):
    umask(0o022)
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    umask(0o077)
    assert _mode(atomic_write_text(tmp_path / "b.txt", "x")) == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = atomic_write_text(tmp_path / "a.txt", "old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_savefig_honours_the_umask(tmp_path, umask):
    umask(0o022)
    assert _mode(atomic_savefig(_figure(), tmp_path / "p.png")) == 0o644


# -- plots -------------------------------------------------------------------------------------------
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_savefig_writes_the_format_of_the_extension(tmp_path):
    path = atomic_savefig(_figure(), tmp_path / "deep" / "plot.png", dpi=50)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert atomic_savefig(_figure(), tmp_path / "plot.pdf").read_bytes().startswith(b"%PDF")
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "deep") == []


def _crashing_savefig(monkeypatch):
    """Figure.savefig writes half a file, then fails (as a kill or a full disk mid-write would)."""
    from matplotlib.figure import Figure

    def crash(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"half a png")
        else:
            with open(fname, "wb") as f:
                f.write(b"half a png")
        raise RuntimeError("crashed mid-write")

    monkeypatch.setattr(Figure, "savefig", crash)


def _plot_oom(path):
    from symphony.evaluation.oom import plot_oom

    plot_oom([{"method": "full", "context_len": 256, "status": "ok", "peak_mem_bytes": 1 << 20,
               "ingest_tok_s": 100.0}], path)


def _plot_needle(path):
    from symphony.evaluation.needle import plot_heatmap

    plot_heatmap([{"method": "sinks", "context_len": 256, "depth": 50, "status": "ok", "correct": True}],
                 "sinks", path)


def _plot_ppl(path):
    from symphony.evaluation.ppl import plot_ppl

    plot_ppl([{"method": "full", "tokens": 100, "status": "ok", "ppl": 5.0, "budget": 100}],
             {"full": [1.5]}, 256, path)


@pytest.mark.parametrize("plot", [_plot_oom, _plot_needle, _plot_ppl], ids=["oom", "needle", "ppl"])
def test_eval_plots_are_written_atomically(tmp_path, monkeypatch, plot):
    path = tmp_path / "plot.png"
    plot(path)
    good = path.read_bytes()
    assert good.startswith(PNG_MAGIC)
    _crashing_savefig(monkeypatch)
    with pytest.raises(RuntimeError):
        plot(path)
    assert path.read_bytes() == good  # the previous plot is intact, not half overwritten
    assert _leftovers(tmp_path) == []


# -- orphaned temp files -----------------------------------------------------------------------------
def test_stale_temp_files_of_the_target_are_removed(tmp_path):
    old = time.time() - io.STALE_TMP_SECONDS - 60
    stale = tmp_path / ".a.json.x1y2z3w4.tmp"  # left by a crash
    legacy = tmp_path / ".a.json.ab_cd123.tmp"  # tempfile.mkstemp's names
    fresh = tmp_path / ".a.json.0a1b2c3d.tmp"  # a concurrent writer's, still being written
    other = tmp_path / ".b.json.x1y2z3w4.tmp"  # another file's: not this write's business
    unrelated = tmp_path / ".a.json.notes.tmp"
    for p in (stale, legacy, fresh, other, unrelated):
        p.write_text("partial")
    for p in (stale, legacy, other, unrelated):
        os.utime(p, (old, old))
    atomic_write_json(tmp_path / "a.json", {"ok": 1})
    assert not stale.exists() and not legacy.exists()
    assert fresh.exists() and other.exists() and unrelated.exists()


# -- failures ----------------------------------------------------------------------------------------
def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "r.json", {"rows": [1]})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(SymphonyError) as e:
        atomic_write_json(path, {"rows": [1, 2]})
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "No space left" in msg and "previous version is kept" in msg
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_write_under_a_file_is_one_line_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SymphonyError, match=r"cannot write .*f/sub/r\.json"):
        atomic_write_json(tmp_path / "f" / "sub" / "r.json", {})


def test_ensure_writable_dir_creates_and_leaves_nothing(tmp_path):
    path = ensure_writable_dir(tmp_path / "a" / "b")
    assert path.is_dir() and list(path.iterdir()) == []


def test_ensure_writable_dir_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SymphonyError) as e:
        ensure_writable_dir(tmp_path / "f" / "out", what="--out")
    assert "\n" not in str(e.value) and "cannot write to" in str(e.value) and "choose another --out" in str(e.value)
    with pytest.raises(SymphonyError, match="not a folder"):
        ensure_writable_dir(tmp_path / "f")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod")
def test_ensure_writable_dir_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SymphonyError, match="Permission denied"):
            ensure_writable_dir(ro / "out")
        with pytest.raises(SymphonyError, match="Permission denied"):
            ensure_writable_dir(ro)  # exists, but cannot take a file
    finally:
        ro.chmod(0o700)


def test_ensure_writable_dir_full_disk(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(SymphonyError, match="No space left"):
        ensure_writable_dir(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_symphony_home_fails_before_converting(tmp_path, monkeypatch):
    from symphony.models import embedded

    def converted(*a, **k):
        raise AssertionError("converted before the error")

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SYMPHONY_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "convert_gguf", converted)
    with pytest.raises(SymphonyError) as e:
        embedded.ensure_embedded_model(verbose=False)
    assert "\n" not in str(e.value) and "cannot write to" in str(e.value) and "SYMPHONY_HOME" in str(e.value)
