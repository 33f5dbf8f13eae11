"""Results that survive interruption: every finished measurement is written at once (atomically),
and a resumed run skips the cells it already has."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from symphony.errors import SymphonyError
from symphony.io import atomic_write_json, read_json


class ResultStore:
    def __init__(self, path: str | Path, key_fields: Iterable[str], meta: dict[str, Any], resume: bool = False,
                 sections: Iterable[str] = ()):
        """`sections`: the objects (settings, config, ...) a resumed run reads back from `previous`; checked
        with the rows when the file is opened, so a file that is not ours fails before any work."""
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.meta = dict(meta)
        self.rows: list[dict[str, Any]] = []
        self.previous: dict[str, Any] = {}  # the file being resumed, as read (empty for a new one)
        if self.path.exists():
            if not resume:
                raise SymphonyError(f"{self.path} exists; pass --resume to continue it, or choose another --out")
            try:
                old = read_json(self.path)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SymphonyError(f"{self.path} is corrupt (not valid JSON); move it away and re-run") from None
            except OSError as e:
                raise SymphonyError(f"cannot read {self.path} ({e.strerror or e}); fix its permissions or choose another --out") \
                    from None
            rows = old.get("rows") if isinstance(old, dict) else None
            if (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows)
                    or any(old.get(k) is not None and not isinstance(old[k], dict) for k in sections)):
                raise SymphonyError(f"{self.path} is not a Symphony results file; choose another --out, or delete"
                                    " it to start over")
            self.previous = old
            self.rows = list(rows)
        self._done = {self.key(r) for r in self.rows}

    def key(self, row: dict[str, Any]) -> tuple:
        return tuple(row.get(k) for k in self.key_fields)

    def has(self, **cell: Any) -> bool:
        return self.key(cell) in self._done

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace the rows (a merge of several processes' shards); written at the next save."""
        self.rows = list(rows)
        self._done = {self.key(r) for r in self.rows}

    def add(self, row: dict[str, Any], extra: Callable[[list[dict]], dict] | None = None) -> None:
        self.rows.append(row)
        self._done.add(self.key(row))
        self.save(extra)

    def save(self, extra: Callable[[list[dict]], dict] | None = None) -> Path:
        body = {**self.meta, "rows": self.rows}
        if extra is not None:
            body.update(extra(self.rows))
        return atomic_write_json(self.path, body)
