"""Real text without downloads: Python's own documentation topics, this machine's man pages, a text file, or a
`datasets` name."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from symphony.errors import SymphonyError


def builtin_text() -> str:
    """~465 KB of English technical prose (pydoc_data.topics, shipped with every CPython)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


MANPAGE_DIRS = ("/usr/share/man/man1", "/usr/share/man/man8")
MANPAGES_CHARS = 12_000_000  # several million tokens that never repeat


def manpage_files(dirs: tuple[str, ...] = MANPAGE_DIRS) -> list[Path]:
    """The man pages of sections 1 and 8 installed here, sorted (links to other pages left out)."""
    files: list[Path] = []
    for d in dirs:
        if os.path.isdir(d):
            files += sorted(p for p in Path(d).iterdir() if p.is_file() and not p.is_symlink())
    return files


def render_manpage(path: Path) -> str:
    """One man page as plain text, 100 columns wide ('' when it does not render: a `.so` link, a bad page)."""
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MANWIDTH": "100", "MAN_DISABLE_SECCOMP": "1"}
    if shutil.which("man"):
        cmd = ["man", "-l", "-P", "cat", str(path)]
    else:
        cmd = ["sh", "-c", 'zcat -f "$1" | groff -man -Tutf8 -rLL=100n', "sh", str(path)]
    try:
        raw = subprocess.run(cmd, env=env, capture_output=True, timeout=60).stdout
        text = subprocess.run(["col", "-bx"], input=raw, env=env, capture_output=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return text.decode("utf-8", errors="replace").strip()


def manpages_text(limit_chars: int = MANPAGES_CHARS, cache: Path | None = None) -> str:
    """About `limit_chars` of this machine's man pages (sections 1 and 8, sorted by file), rendered as text;
    cached in ~/.cache/symphony/manpages.txt (or `cache`) after the first call, which takes a while."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from symphony.config import symphony_home
    from symphony.io import atomic_write_text

    cache = cache or symphony_home() / "manpages.txt"
    if cache.is_file():
        return cache.read_text(encoding="utf-8", errors="replace")[:limit_chars]
    missing = not (shutil.which("man") or shutil.which("groff")) or not shutil.which("col")
    files = [] if missing else manpage_files()
    if not files:
        what = "man/groff and col" if missing else f"man pages in {' or '.join(MANPAGE_DIRS)}"
        raise SymphonyError(f"the manpages haystack needs {what} on this machine; pass --haystack FILE instead")
    pages: list[str] = []
    size = 0
    with ThreadPoolExecutor(max_workers=2) as pool, tqdm(total=limit_chars, desc="man pages", unit="char",
                                                         unit_scale=True, leave=False) as bar:
        ahead = [pool.submit(render_manpage, f) for f in files[:8]]  # a few pages in flight, in order
        for nxt in files[8:] + [None] * 8:
            text = ahead.pop(0).result()
            if nxt is not None:
                ahead.append(pool.submit(render_manpage, nxt))
            if text:
                pages.append(text)
                size += len(text) + 2
                bar.update(len(text) + 2)
            if size >= limit_chars or not ahead:
                break
        for f in ahead:
            f.cancel()
    if not pages:
        raise SymphonyError("no man page could be rendered here; pass --haystack FILE instead")
    text = "\n\n".join(pages)
    atomic_write_text(cache, text)
    return text


def load_text(source: str = "builtin", split: str = "train", text_field: str = "text") -> str:
    """`builtin`, `manpages`, a path to a text file, or a `datasets` name (`name` or `name:config`)."""
    if source in ("", "builtin"):
        return builtin_text()
    if source == "manpages":
        return manpages_text()
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if source.startswith(("/", "./", "../", "~")) or path.suffix in (".txt", ".md"):
        raise SymphonyError(f"text file not found: {source}")
    return _dataset_text(source, split, text_field)


def _dataset_text(name: str, split: str, text_field: str) -> str:
    try:
        import datasets
    except ImportError:
        raise SymphonyError("the `datasets` package is needed for dataset corpora: pip install datasets") from None
    ds_name, _, ds_config = name.partition(":")
    try:
        ds = datasets.load_dataset(ds_name, ds_config or None, split=split)
    except Exception as e:  # datasets raises many types (offline, missing, bad config)
        raise SymphonyError(f"cannot load dataset '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if text_field not in ds.column_names:
        raise SymphonyError(f"dataset '{name}' has no '{text_field}' column; columns: {', '.join(ds.column_names)}")
    return "\n\n".join(t for t in ds[text_field] if t)


def token_stream(tokenizer, text: str, n_tokens: int) -> list[int]:
    """Exactly `n_tokens` token ids of `text`, cycling through it when it is shorter (for any length)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise SymphonyError("the text is empty after tokenisation")
    out: list[int] = []
    while len(out) < n_tokens:
        out.extend(ids[: n_tokens - len(out)])
    return out
