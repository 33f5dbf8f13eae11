"""Atomic writes: a crash mid-write never leaves a half-written artifact behind.

Every file is written to a temp file `.NAME.XXXXXXXX.tmp` beside its target, then renamed over it. Files get
the permissions `open()` would give (0666 minus the umask, or the mode of the file they replace), so a
shared results folder stays readable to the group. A failed write is one SymphonyError naming the file;
the previous version is kept.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import IO, Any, Iterator

from symphony.errors import SymphonyError

# A temp file untouched this long was orphaned by a crash: no write takes minutes between creating and
# renaming it (the mtime moves while data goes in), so a concurrent writer's temp file is never this old.
STALE_TMP_SECONDS = 15 * 60
_TMP_RANDOM = 8  # characters of randomness in a temp name (tempfile.mkstemp's count, so its orphans match too)


def _tmp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{{_TMP_RANDOM}}}\.tmp")


def _remove_stale_tmps(path: Path) -> None:
    """Delete orphaned temp files of `path` (same folder, same name) older than STALE_TMP_SECONDS."""
    pattern, cutoff = _tmp_pattern(path.name), time.time() - STALE_TMP_SECONDS
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            pass  # gone already (another writer cleaned it) or not ours to remove


def _create_tmp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temp file beside `path`: (fd, its path). os.open's 0o666 lets the umask
    decide the mode, as open() does; a replaced file's own mode is kept instead."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TMP_RANDOM // 2)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only when the block finishes; on any error `path` is untouched
    and the temp file removed. OSError (disk full, no permission, ...) becomes a one-line SymphonyError."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmps(path)
        fd, tmp = _create_tmp(path)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        kept = " (the previous version is kept)" if os.path.exists(path) else ""
        raise SymphonyError(f"cannot write {path} ({_reason(e)}){kept}; free some space or fix its permissions"
                            " and run again") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs: Any) -> Path:
    """`fig.savefig(path, **kwargs)`, atomically; the format comes from the file's extension unless given."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    with atomic_open(path) as f:
        fig.savefig(f, **kwargs)
    return path


def save_plot(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out `fig`, write it atomically to `path` and close it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        return atomic_savefig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ensure_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create `path` if needed and really write (and remove) a small file there, so an unwritable or full
    location fails now, in one line, instead of after hours of work. `what` names the setting to change."""
    path = Path(path).expanduser()
    try:
        if os.path.exists(path) and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is not a folder", str(path))
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".symphony-write-check"
        _remove_stale_tmps(probe)
        fd, tmp = _create_tmp(probe)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)  # a full disk may only refuse the data once it is flushed
        finally:
            os.close(fd)
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise SymphonyError(f"cannot write to {path} ({_reason(e)}); choose another {what}") from None
    return path


def atomic_replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written directory into place; an older `dst` is replaced only once `src` is complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
