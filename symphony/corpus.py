"""Real text without downloads: Python's own documentation topics, a text file, or a `datasets` name."""
from __future__ import annotations

from pathlib import Path

from symphony.errors import SymphonyError


def builtin_text() -> str:
    """~465 KB of English technical prose (pydoc_data.topics, shipped with every CPython)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def load_text(source: str = "builtin", split: str = "train", text_field: str = "text") -> str:
    """`builtin`, a path to a text file, or a `datasets` name (`name` or `name:config`)."""
    if source in ("", "builtin"):
        return builtin_text()
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
