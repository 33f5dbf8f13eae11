"""The recall archive: token ids of evicted spans, re-read when a question needs them.

A token's KV costs tens of KB; its id costs 4 bytes. So the archive keeps the ids of far more spans than the
cache can hold as KV, and when a question arrives, the spans that cover its rarest words are re-encoded in
front of it: exact text, still a fixed budget. The recent window (not archived yet) competes too: when the
best match is still there, it is that text that gets re-read, not an archived look-alike.

Each span takes its token ids (int32), its stream start (int64) and its salience (float32): 4 x span_len + 12
bytes (`symphony.config.recall_span_nbytes`); with the HEP-DNA retriever, also its learned summary (int8, `dim`
bytes), pooled from the hidden states the cache recorded while the span streamed by. In RAM the rows are
preallocated (`cache.recall_bytes`), so the archive's bytes are fixed by the config at any input length; once every row is taken, the lowest-scored span
gives way. On disk (`cache.recall_path`) the rows are memory-mapped files, one row per span of the stream
(row = start // span_len), that grow with the stream while RAM stays constant; every span is kept.
`recall.json` beside them, written atomically, records the layout, so a RecallLedger opened later on the same
folder reads the archive back. A search reads the rows in chunks, so its own memory is bounded as well.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import torch

from symphony.config import RECALL_ID_BYTES, RECALL_SPAN_BYTES, CacheConfig, recall_span_nbytes
from symphony.errors import SymphonyError
from symphony.io import atomic_write_json
from symphony.memory.retriever import similarity
from symphony.runtime.facts import (
    MAX_UNIT, Query, TokenKinds, Unit, hop_query, hop_units, pick, pick_by_meaning, units,
)

# dtype and file of each per-span column; their itemsizes are config.RECALL_ID_BYTES and RECALL_SPAN_BYTES
COLUMNS = (("ids", torch.int32, np.int32, "ids.i32", -1), ("start", torch.int64, np.int64, "start.i64", -1),
           ("score", torch.float32, np.float32, "score.f32", -math.inf))
assert COLUMNS[0][1].itemsize == RECALL_ID_BYTES and sum(c[1].itemsize for c in COLUMNS[1:]) == RECALL_SPAN_BYTES
SUMMARY_COLUMN = ("summary", torch.int8, np.int8, "summary.i8", 0)  # with a retriever: [rows, dim] codes
MAX_POOLING = 512  # spans whose summary is still being pooled (their tokens reach the archive in parts)
SEMANTIC_SPANS = 1  # spans nearest to the question's summary whose sentences a search re-reads
META, FORMAT = "recall.json", "symphony-recall/1"
CHUNK_SPANS = 4096  # rows a search (or a reopen's recount) reads at a time
GROW_SPANS = 4096  # rows a disk archive grows by at least (then by an eighth of its size): few remaps, little slack
MAX_CANDIDATES = 512  # spans, by the query weight they hold, that a search cuts into units (with their neighbours)
HOP_MAX_DF = 2  # a name followed by a hop recurs in at most this many other units


def new_archive_path(parent: str | os.PathLike) -> Path:
    """A fresh, unused subfolder name of `parent` for one stream's archive: every stream starts at position 0, so
    each needs rows of its own."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(parent).expanduser() / f"stream-{stamp}-{os.getpid()}-{secrets.token_hex(4)}"


class RecallLedger:
    def __init__(self, capacity_tokens: int, span_len: int, path: str | os.PathLike | None = None,
                 summary_dim: int = 0, summarize=None):
        """In RAM: room for capacity_tokens // span_len spans (at least one), preallocated. With `path` (a folder):
        the archive there, opened if one is, else created at the first `add`; it grows, so capacity_tokens is unused.
        `summary_dim` > 0 keeps a summary per span: `summarize(pooled hidden states [s, d])` gives their int8 codes
        [s, summary_dim] (the retriever's `summarize_spans`)."""
        self.span_len = max(1, span_len)
        self.path = None if path is None else Path(path).expanduser()
        self.summary_dim, self.summarize = max(0, summary_dim), summarize
        # span start -> (sum of its tokens' hidden states, offsets summed): a span's summary pools every token it
        # holds, though its tokens reach the archive over several compactions; complete spans are dropped
        self._pooling: dict[int, tuple[torch.Tensor, set[int]]] = {}
        self.columns = COLUMNS + ((SUMMARY_COLUMN,) if self.summary_dim else ())
        # spans held, one past the last stream position archived; in a dict the disk finalizer shares
        self._state = {"spans": 0, "end": 0, "dirty": False}
        if self.path is None:
            self.n_spans: int | None = max(1, capacity_tokens // self.span_len)
            for name, dtype, _, _, fill in self.columns:
                setattr(self, name, torch.full(self._shape(name, self.n_spans), fill, dtype=dtype, device="cpu"))
            self._row_of: dict[int, int] = {}
            return
        self.n_spans = None  # every span is kept
        self._maps: list[np.memmap] = []
        self._map(0)
        meta = self._read_meta()
        if meta is not None:
            self._reopen(meta)
        # flushes the files and marks recall.json clean when the ledger is dropped or the process exits
        self._finalizer = weakref.finalize(self, _flush, self._maps, self.path, self.span_len, self._state,
                                           self.summary_dim)

    @classmethod
    def for_cache(cls, c: CacheConfig, retriever=None) -> RecallLedger | None:
        """The archive a `symphony`-policy stream gets from `c`: None when recall is off; in RAM, or in a new
        subfolder of `c.recall_path`; with the HEP-DNA `retriever`'s summaries when one is given."""
        dim = retriever.dim if retriever is not None else 0
        spans = c.recall_spans(dim)
        if spans == 0:
            return None
        return cls(spans * c.span_len, c.span_len, new_archive_path(c.recall_path) if c.recall_path else None,
                   dim, retriever.summarize_spans if retriever is not None else None)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RecallLedger:
        """The disk archive in `path`, with the span length it was written with."""
        meta = _load_meta(Path(path).expanduser())
        if meta is None:
            raise SymphonyError(f"{path} holds no recall archive ({META} is missing); pass the folder a stream's"
                                " archive was written to (a subfolder of cache.recall_path)")
        return cls(0, meta["span_len"], path, meta.get("summary_dim", 0))

    @property
    def end(self) -> int:
        """One past the last stream position archived: later positions are still in the window."""
        return self._state["end"]

    @property
    def rows(self) -> int:
        return self.start.shape[0]

    def nbytes(self) -> int:
        """Bytes the archive holds: fixed by the config in RAM; the files' size on disk (RAM: none preallocated)."""
        return sum(getattr(self, name).nbytes for name, *_ in self.columns)

    def __len__(self) -> int:
        return self._state["spans"]

    def add(self, positions: torch.Tensor, token_ids: torch.Tensor, salience: torch.Tensor,
            features: torch.Tensor | None = None) -> None:
        """Store archived tokens (left the window), grouped into aligned spans; when a RAM archive is full, the
        lowest-scored span gives way. `features` [n, d]: the hidden states a span's summary is pooled from."""
        real = positions >= 0  # persistent-memory slots (negative positions) hold learned tokens, not stream text
        positions, token_ids, salience = positions[real], token_ids[real], salience[real]
        if positions.numel() == 0:
            return
        summarizing = self.summary_dim > 0 and self.summarize is not None and features is not None
        pooled = {}
        if summarizing:
            features = features[real]
        if self.path is not None and not self._state["dirty"]:
            self._mark_dirty()
        st = self._state
        st["end"] = max(st["end"], int(positions.max()) + 1)
        span_start = torch.div(positions, self.span_len, rounding_mode="floor") * self.span_len
        for s in torch.unique(span_start).tolist():
            sel = span_start == s
            offs, ids, score = positions[sel] - s, token_ids[sel], float(salience[sel].mean())
            row, new = self._place(s, score)
            if row is None:
                continue
            if new:
                self.ids[row] = -1
                self.start[row], self.score[row] = s, score
                st["spans"] += 1
            else:
                self.score[row] = max(float(self.score[row]), score)
            self.ids[row, offs] = ids.to(torch.int32)
            if summarizing:
                total, done = self._pooling.setdefault(s, (torch.zeros(features.shape[1]), set()))
                fresh = [k for k, o in enumerate(offs.tolist()) if o not in done]
                if fresh or new:
                    total += features[sel][fresh].float().sum(0)
                    done.update(offs[fresh].tolist())
                    pooled[row] = total / max(1, len(done))
                if len(done) == self.span_len:
                    del self._pooling[s]
        if pooled:
            rows = list(pooled)
            codes = self.summarize(torch.stack([pooled[r] for r in rows]))
            self.summary[torch.tensor(rows)] = codes.to(torch.int8).cpu()
            while len(self._pooling) > MAX_POOLING:  # spans that never complete (cut short): the oldest go
                del self._pooling[min(self._pooling)]

    def flush(self) -> None:
        """Disk archive: write the mapped rows through and mark recall.json clean (its counts current)."""
        if self.path is not None:
            _flush(self._maps, self.path, self.span_len, self._state, self.summary_dim)

    # -- rows --------------------------------------------------------------------------------------------

    def _shape(self, name: str, rows: int) -> tuple[int, ...]:
        return (rows, self.span_len) if name == "ids" else (rows, self.summary_dim) if name == "summary" else (rows,)

    def _place(self, s: int, score: float) -> tuple[int | None, bool]:
        """The row of the span starting at `s` and whether it is new; None when a full RAM archive keeps its spans."""
        if self.path is not None:
            row = s // self.span_len
            if row >= self.rows:
                self._grow(row + 1)
            return row, int(self.start[row]) < 0
        row = self._row_of.get(s)
        if row is not None:
            return row, False
        row = self._free_row(score)
        if row is not None:
            self._row_of[s] = row
        return row, row is not None

    def _free_row(self, score: float) -> int | None:
        if len(self._row_of) < self.n_spans:
            return len(self._row_of)  # rows fill in order; once full, a row is only ever taken over
        worst = int(torch.argmin(self.score))
        if self.score[worst] >= score:
            return None
        del self._row_of[int(self.start[worst])]
        self._state["spans"] -= 1
        return worst

    def _row(self, s: int) -> int | None:
        """The row holding the span that starts at `s`, if archived."""
        if self.path is None:
            return self._row_of.get(s)
        row = s // self.span_len
        return row if 0 <= row < self.rows and int(self.start[row]) == s else None

    # -- disk --------------------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        return [self.path / file for _, _, _, file, _ in self.columns]

    def _map(self, rows: int) -> None:
        """Map the first `rows` rows of the files (none: empty columns, nothing on disk yet)."""
        self._maps[:] = [np.memmap(f, dtype=np_dtype, mode="r+", shape=self._shape(name, rows))
                         for f, (name, _, np_dtype, _, _) in zip(self._files(), self.columns)] if rows else []
        cols = ([torch.from_numpy(m) for m in self._maps] if rows else
                [torch.full(self._shape(name, 0), fill, dtype=dtype) for name, dtype, _, _, fill in self.columns])
        for (name, *_), col in zip(self.columns, cols):
            setattr(self, name, col)

    def _grow(self, rows: int) -> None:
        """Append empty rows (written out, not sparse: a full disk then fails here, in one line, instead of with
        a SIGBUS when a mapped page is first written) and remap."""
        rows = max(rows, self.rows + max(GROW_SPANS, self.rows // 8))
        try:
            for f, (name, _, np_dtype, _, fill) in zip(self._files(), self.columns):
                with open(f, "ab") as out:
                    for lo in range(self.rows, rows, CHUNK_SPANS):
                        n = min(CHUNK_SPANS, rows - lo)
                        out.write(np.full(self._shape(name, n), fill, dtype=np_dtype).tobytes())
        except OSError as e:
            raise SymphonyError(f"cannot grow the recall archive in {self.path} ({e.strerror or e}); free some space"
                                " or choose another cache.recall_path") from None
        self._map(rows)

    def _mark_dirty(self) -> None:
        """Before the first write since the last flush: recall.json says its counts may be stale, so a reader
        after a crash recounts them from the rows."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._state["dirty"] = True
        _write_meta(self.path, self.span_len, self._state, self.summary_dim)

    def _read_meta(self) -> dict | None:
        meta = _load_meta(self.path)
        if meta is not None and meta["span_len"] != self.span_len:
            raise SymphonyError(f"the recall archive in {self.path} was written with span_len {meta['span_len']},"
                                f" not {self.span_len}; open it with RecallLedger.open or use another folder")
        if meta is not None and meta.get("summary_dim", 0) != self.summary_dim:
            raise SymphonyError(f"the recall archive in {self.path} keeps {meta.get('summary_dim', 0)}-byte span"
                                f" summaries, not {self.summary_dim}; open it with RecallLedger.open or use another"
                                " folder")
        return meta

    def _reopen(self, meta: dict) -> None:
        sizes = [f.stat().st_size if f.exists() else 0 for f in self._files()]
        self._map(min(size // (dtype.itemsize * math.prod(self._shape(name, 1)))
                      for size, (name, dtype, _, _, _) in zip(sizes, self.columns)))
        if not meta["dirty"]:
            self._state.update(spans=meta["spans"], end=meta["end"])
            return
        spans, last = 0, -1  # a writer stopped before its last flush: the rows are the truth
        for lo in range(0, self.rows, CHUNK_SPANS):
            start = self.start[lo:lo + CHUNK_SPANS]
            spans += int((start >= 0).sum())
            last = max(last, int(start.max()))
        end = 0
        if last >= 0:
            held = torch.nonzero(self.ids[last // self.span_len] >= 0)[:, 0]
            end = last + (int(held[-1]) + 1 if len(held) else 0)
        self._state.update(spans=spans, end=end)

    # -- search ------------------------------------------------------------------------------------------

    def _live_rows(self, live: tuple[torch.Tensor, torch.Tensor] | None) -> dict[int, torch.Tensor]:
        """Token-id rows of the spans of `live` (positions, ids of the cache's slots) not archived yet."""
        if live is None:
            return {}
        pos, tok = live[0].reshape(-1).cpu(), live[1].reshape(-1).cpu()
        sel = (pos >= self.end) & (tok >= 0)
        pos, tok = pos[sel], tok[sel]
        out = {}
        for s in torch.unique(torch.div(pos, self.span_len, rounding_mode="floor") * self.span_len).tolist():
            inside = (pos >= s) & (pos < s + self.span_len)
            row = torch.full((self.span_len,), -1, dtype=torch.int32)
            row[pos[inside] - s] = tok[inside].to(torch.int32)
            out[s] = row
        return out

    def _chunks(self, extra: dict[int, torch.Tensor]):
        """(token ids [k, span_len], starts [k], order [k]) of every candidate span, a chunk of rows at a time: the
        archived spans in row order, a span cut by the archive's end merged with its live part, then the live
        spans not archived. `order` ranks them the same way across calls."""
        extra_starts = torch.tensor(sorted(extra), dtype=torch.int64)
        merged: set[int] = set()
        for lo in range(0, self.rows, CHUNK_SPANS):
            start = self.start[lo:lo + CHUNK_SPANS]
            used = torch.nonzero(start >= 0)[:, 0]
            if len(used) == 0:
                continue
            ids, starts = self.ids[lo:lo + CHUNK_SPANS][used], start[used].clone()
            for i in torch.nonzero(torch.isin(starts, extra_starts))[:, 0].tolist():
                s = int(starts[i])
                ids[i] = _merge(ids[i], extra[s])
                merged.add(s)
            yield ids, starts, used + lo
        rest = [(j, s) for j, s in enumerate(extra_starts.tolist()) if s not in merged]
        if rest:
            yield (torch.stack([extra[s] for _, s in rest]), torch.tensor([s for _, s in rest]),
                   torch.tensor([self.rows + j for j, _ in rest]))

    def _fetch(self, starts: list[int], extra: dict[int, torch.Tensor]):
        """(ids, starts, order) as `_chunks` gives them, of those of `starts` that are candidates."""
        ids, found, order = [], [], []
        extra_index = {s: j for j, s in enumerate(sorted(extra))}
        for s in starts:
            row = self._row(s)
            if row is None and s not in extra:
                continue
            ids.append(_merge(None if row is None else self.ids[row], extra.get(s)))
            found.append(s)
            order.append(self.rows + extra_index[s] if row is None else row)
        if not found:
            return (torch.empty(0, self.span_len, dtype=torch.int32), torch.empty(0, dtype=torch.int64),
                    torch.empty(0, dtype=torch.int64))
        return torch.stack(ids), torch.tensor(found), torch.tensor(order)

    def _idf(self, query: Query, extra: dict[int, torch.Tensor]) -> None:
        """Set the query's weights from its terms' document frequency over every candidate span: a pair's own,
        so a rare name split into common sub-tokens still weighs as rare."""
        n_spans, df = 0, torch.zeros(len(query.weight))
        for ids, starts, _ in self._chunks(extra):
            n_spans += len(ids)
            df += query.presence(ids, joined=self._joined(starts)).sum(0)
        n_tok = len(query.tokens)
        query.set_idf(df[:n_tok], n_spans, df[n_tok:])

    def _joined(self, starts: torch.Tensor) -> torch.Tensor:
        """bool [k]: whether each of a chunk's spans continues the one before it in the stream."""
        joined = torch.zeros(len(starts), dtype=torch.bool)
        joined[1:] = starts[1:] == starts[:-1] + self.span_len
        return joined

    def _candidates(self, query: Query, extra: dict[int, torch.Tensor], limit: int) -> list[int]:
        """Starts of the `limit` spans holding the most query weight (ties: the earlier span)."""
        best_score, best_start = torch.empty(0), torch.empty(0, dtype=torch.int64)
        for ids, starts, order in self._chunks(extra):
            held = (query.presence(ids, joined=self._joined(starts)).float() * query.weight).sum(1)
            some = held > 0
            score, start = torch.cat([best_score, held[some]]), torch.cat([best_start, starts[some]])
            top = torch.sort(score, descending=True, stable=True).indices[:limit]
            best_score, best_start = score[top], start[top]
        return best_start.tolist()

    def _runs(self, starts: list[int], extra: dict[int, torch.Tensor], reach: int) -> list[tuple[int, torch.Tensor]]:
        """(stream start, token ids) of the runs of consecutive text around `starts`: each span with the spans up
        to `reach` away on either side that are held (archived or live), cut where a token is unknown."""
        span = self.span_len
        near = sorted({s + k * span for s in starts for k in range(-reach, reach + 1)})
        ids, found, _ = self._fetch([s for s in near if s >= 0], extra)
        runs: list[tuple[int, torch.Tensor]] = []
        run_start, pieces, prev = None, [], None
        for s, row in zip(found.tolist(), ids):
            if prev is None or s != prev + span:
                if pieces:
                    runs.append((run_start, torch.cat(pieces)))
                run_start, pieces = s, []
            pieces.append(row)
            prev = s
        if pieces:
            runs.append((run_start, torch.cat(pieces)))
        out = []
        for start, row in runs:  # unknown tokens (a span's unfilled slots) cut a run
            known = (row >= 0).tolist() + [False]
            a = None
            for k, ok in enumerate(known):
                if ok and a is None:
                    a = k
                elif not ok and a is not None:
                    out.append((start + a, row[a:k]))
                    a = None
        return out

    def _units(self, query: Query, extra: dict[int, torch.Tensor], kinds: TokenKinds | None, limit: int,
               max_unit: int) -> list[Unit]:
        starts = self._candidates(query, extra, limit)
        return units(self._runs(starts, extra, -(-max_unit // self.span_len)), query, kinds, max_unit)

    def _nearest(self, query_summary: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """(start, similarity) of the `k` archived spans whose summaries are nearest the question's (nearest
        first)."""
        best_sim, best_start = torch.empty(0), torch.empty(0, dtype=torch.int64)
        for lo in range(0, self.rows, CHUNK_SPANS):
            codes, start = self.summary[lo:lo + CHUNK_SPANS], self.start[lo:lo + CHUNK_SPANS]
            used = torch.nonzero((start >= 0) & (codes != 0).any(1))[:, 0]
            sim = torch.cat([best_sim, similarity(query_summary, codes[used])])
            start = torch.cat([best_start, start[used]])
            top = torch.sort(sim, descending=True, stable=True).indices[:k]
            best_sim, best_start = sim[top], start[top]
        return list(zip(best_start.tolist(), best_sim.tolist()))

    def _by_meaning(self, query: Query, query_summary: torch.Tensor, extra: dict[int, torch.Tensor],
                    kinds: TokenKinds | None, k: int, max_unit: int, min_similarity: float,
                    judged: float = math.inf) -> list[Unit]:
        """Every unit that lies in one of the `k` spans nearest the question, if at least `min_similarity` near
        (a span's summary says the fact is in it, not which of its sentences: all of them come back whole), with
        that span's similarity; none of a span holding a unit whose query weight reaches `judged` (a look-alike
        that lost to the lexical picks), so the retriever only adds what the wording hid."""
        near = [(s, sim) for s, sim in self._nearest(query_summary, k) if sim >= min_similarity]
        if not near:
            return []
        found = units(self._runs([s for s, _ in near], extra, -(-max_unit // self.span_len)), query, kinds, max_unit,
                      every=True)
        out = []
        for s, sim in near:
            mine = [u for u in found if u.start < s + self.span_len and s < u.end]
            if any(u.score >= judged for u in mine):
                continue  # a look-alike the question's own terms judged already: the span adds nothing
            for u in mine:
                u.similarity = max(u.similarity, sim)
                out.append(u)
        return list({u.start: u for u in out}.values())

    def search(self, query_ids: list[int] | torch.Tensor, budget_tokens: int, min_gain: float = 0.5,
               live: tuple[torch.Tensor, torch.Tensor] | None = None, max_candidates: int = MAX_CANDIDATES,
               kinds: TokenKinds | None = None, hops: int = 0, max_df: int = HOP_MAX_DF,
               max_unit: int = MAX_UNIT, query_summary: torch.Tensor | None = None,
               min_similarity: float = 0.5, semantic_spans: int = SEMANTIC_SPANS) -> list[list[int]]:
        """Whole facts to re-read for a question (`facts` says how they are cut and picked), as token-id runs in
        stream order, at most `budget_tokens` in all.

        `kinds` (from the tokenizer) cuts text at sentence and line ends and tells names for hops; without it the
        units are pieces of `max_unit` tokens and there are no hops. `live` (positions, token ids of the cache's slots) adds the window's text not archived
        yet: when the fact is still in the window, that is what gets re-read, not an archived look-alike (read
        right before the question, a small model would answer from it). `hops` bounds the searches that follow
        names the re-read text shares with other facts (`facts.hop_units`).

        The archive is read a chunk of rows at a time: once for each query token's document frequency, once for
        the `max_candidates` spans holding the most query weight; those, with their neighbours, are cut into
        units. Only past that many spans sharing a query term can the picks differ from judging every span.

        `query_summary` (the HEP-DNA retriever's encoding of the question, with an archive that keeps summaries)
        adds the sentences of the `semantic_spans` spans nearest it, if at least `min_similarity` near and not picked
        already: a question worded unlike its fact still finds it."""
        if len(self) == 0 or budget_tokens <= 0:
            return []
        max_unit = max(1, min(max_unit, budget_tokens))
        query = Query(query_ids, words=kinds.words if kinds is not None else None,
                      content=kinds.content if kinds is not None else None)
        extra = self._live_rows(live)
        self._idf(query, extra)
        found = self._units(query, extra, kinds, max_candidates, max_unit)
        picks = pick(found, query.weight, budget_tokens, min_gain)
        if query_summary is not None and self.summary_dim:
            judged = min_gain * picks[0].score if picks else math.inf
            near = self._by_meaning(query, query_summary, extra, kinds, semantic_spans, max_unit, min_similarity,
                                    judged)
            picks = picks + pick_by_meaning(near, picks, budget_tokens)
        frontier = picks
        for _ in range(hops if kinds is not None else 0):
            hop = hop_query(frontier, query, kinds)
            if hop is None:
                break
            self._idf(hop, extra)
            follow = hop_units(self._units(hop, extra, kinds, max_candidates, max_unit), picks, hop, query,
                               max_df, min_gain)
            frontier = pick(follow, hop.weight, budget_tokens, min_gain, taken=picks)
            if not frontier:
                break
            picks = picks + frontier
        runs: list[list[int]] = []
        prev_end = None
        for u in sorted(picks, key=lambda u: u.start):
            if prev_end == u.start and runs:
                runs[-1].extend(u.ids)
            else:
                runs.append(list(u.ids))
            prev_end = u.start + len(u.ids)
        return runs


def _merge(archived: torch.Tensor | None, live: torch.Tensor | None) -> torch.Tensor:
    """One span's token ids from its archived and live parts (either may be missing; live wins where both hold one)."""
    if live is None:
        return archived.clone()
    return live if archived is None else torch.where(live >= 0, live, archived)


def _load_meta(path: Path) -> dict | None:
    """recall.json of the archive in `path` (None: no archive there)."""
    f = path / META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
        ok = (meta.get("format") == FORMAT and isinstance(meta.get("span_len"), int) and meta["span_len"] > 0
              and all(isinstance(meta.get(k), int) for k in ("spans", "end")) and isinstance(meta.get("dirty"), bool)
              and isinstance(meta.get("summary_dim", 0), int) and meta.get("summary_dim", 0) >= 0)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise SymphonyError(f"{f} is not a readable {FORMAT} header; choose another cache.recall_path or remove it")
    if meta.get("byteorder") != sys.byteorder:
        raise SymphonyError(f"the recall archive in {path} was written on a {meta.get('byteorder')}-endian machine;"
                            f" this one is {sys.byteorder}-endian")
    return meta


def _write_meta(path: Path, span_len: int, state: dict, summary_dim: int = 0) -> None:
    atomic_write_json(path / META, {"format": FORMAT, "span_len": span_len, "byteorder": sys.byteorder,
                                    "bytes_per_span": recall_span_nbytes(span_len, summary_dim),
                                    "summary_dim": summary_dim, "spans": state["spans"], "end": state["end"],
                                    "dirty": state["dirty"]})


def _flush(maps: list[np.memmap], path: Path, span_len: int, state: dict, summary_dim: int = 0) -> None:
    """Write the mapped rows through, then record the counts as current (not `dirty`). Nothing before a write, nor
    once the folder is gone (removed while the ledger lived: writing recall.json would only recreate it)."""
    if not state["dirty"] or not path.is_dir():
        return
    for m in maps:
        m.flush()
    state["dirty"] = False
    _write_meta(path, span_len, state, summary_dim)
