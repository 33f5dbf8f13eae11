"""The recall ledger: token ids of evicted spans, kept in a fixed budget, re-read when a question needs them.

A token's KV costs tens of KB; its id costs 4 bytes. So the pointer ledger keeps the ids of many
more candidate spans than the cache can hold as KV (the best by salience when it is full), and when a
question arrives, the spans that share its rarest words are re-encoded in front of it: exact text,
still a fixed budget.
"""
from __future__ import annotations

import math

import torch


class RecallLedger:
    def __init__(self, capacity_tokens: int, span_len: int):
        self.span_len = max(1, span_len)
        self.n_spans = max(1, capacity_tokens // self.span_len)
        self.ids = torch.full((self.n_spans, self.span_len), -1, dtype=torch.int32)
        self.start = torch.full((self.n_spans,), -1, dtype=torch.long)  # stream position of the span's start
        self.score = torch.full((self.n_spans,), -math.inf)
        self._row_of: dict[int, int] = {}

    def nbytes(self) -> int:
        return self.ids.nbytes + self.start.nbytes + self.score.nbytes

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, positions: torch.Tensor, token_ids: torch.Tensor, salience: torch.Tensor) -> None:
        """Store archived tokens (left the window), grouped into aligned spans; when full, the lowest-scored span gives way."""
        if positions.numel() == 0:
            return
        span_start = torch.div(positions, self.span_len, rounding_mode="floor") * self.span_len
        for s in torch.unique(span_start).tolist():
            sel = span_start == s
            offs, ids, sal = positions[sel] - s, token_ids[sel], salience[sel]
            row = self._row_of.get(s)
            if row is None:
                score = float(sal.mean())
                row = self._free_row(score)
                if row is None:
                    continue
                self.ids[row] = -1
                self.start[row], self.score[row] = s, score
                self._row_of[s] = row
            else:
                self.score[row] = max(float(self.score[row]), float(sal.mean()))
            self.ids[row, offs] = ids.to(torch.int32)

    def _free_row(self, score: float) -> int | None:
        if len(self._row_of) < self.n_spans:
            return int(torch.nonzero(self.start < 0)[0])
        worst = int(torch.argmin(self.score))
        if self.score[worst] >= score:
            return None
        del self._row_of[int(self.start[worst])]
        return worst

    def search(self, query_ids: list[int] | torch.Tensor, budget_tokens: int, context: int = 1) -> list[list[int]]:
        """Spans sharing the query's rarest tokens (IDF-weighted, bigrams count extra), with `context`
        neighbouring spans on each side, merged and returned in stream order as token-id runs."""
        used = torch.nonzero(self.start >= 0)[:, 0]
        if used.numel() == 0 or budget_tokens <= 0:
            return []
        q = torch.unique(torch.as_tensor(query_ids, dtype=torch.int32))
        ids = self.ids[used]
        present = (ids[:, :, None] == q[None, None, :]).any(dim=1)  # [spans, query tokens]
        df = present.sum(0).float()
        idf = torch.log((used.numel() + 1) / (df + 1)) * (df > 0)
        score = (present.float() * idf).sum(1)
        qa = torch.as_tensor(query_ids, dtype=torch.int32)
        if qa.numel() > 1:  # consecutive query bigrams found consecutively in a span
            a, b = ids[:, :-1], ids[:, 1:]
            for x, y in zip(qa[:-1].tolist(), qa[1:].tolist()):
                hit = ((a == x) & (b == y)).any(1)
                score += hit.float() * 0.5 * float(idf[q == x].sum() + idf[q == y].sum())
        starts = self.start[used]
        chosen: set[int] = set()
        for i in torch.argsort(score, descending=True).tolist():
            if score[i] <= 0 or len(chosen) * self.span_len >= budget_tokens:
                break
            s = int(starts[i])
            for k in range(-context, context + 1):
                if len(chosen) * self.span_len >= budget_tokens:
                    break
                if s + k * self.span_len in self._row_of:
                    chosen.add(s + k * self.span_len)
        runs: list[list[int]] = []
        prev_end = None
        for s in sorted(chosen):
            row_ids = [t for t in self.ids[self._row_of[s]].tolist() if t >= 0]
            if prev_end == s and runs:
                runs[-1].extend(row_ids)
            else:
                runs.append(row_ids)
            prev_end = s + self.span_len
        return runs
