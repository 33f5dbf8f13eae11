"""The recall ledger: token ids of evicted spans, kept in a fixed budget, re-read when a question needs them.

A token's KV costs tens of KB; its id costs 4 bytes. So the pointer ledger keeps the ids of many
more candidate spans than the cache can hold as KV (the best by salience when it is full), and when a
question arrives, the spans that cover its rarest words are re-encoded in front of it: exact text,
still a fixed budget. The recent window (not archived yet) competes too: when the best match is still
there, it is that text that gets re-read, not an archived look-alike.
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
        self.end = 0  # one past the last stream position archived: later positions are still in the window

    def nbytes(self) -> int:
        return self.ids.nbytes + self.start.nbytes + self.score.nbytes

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, positions: torch.Tensor, token_ids: torch.Tensor, salience: torch.Tensor) -> None:
        """Store archived tokens (left the window), grouped into aligned spans; when full, the lowest-scored span gives way."""
        if positions.numel() == 0:
            return
        self.end = max(self.end, int(positions.max()) + 1)
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

    def _candidates(self, live: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, list[int]]:
        """Token ids [spans, span_len] (-1 where absent) and stream starts of the archived spans plus the
        spans of `live` (positions, ids of the cache's slots) not archived yet; a span cut by the archive's
        end is one candidate, both parts merged."""
        used = torch.nonzero(self.start >= 0)[:, 0]
        ids, starts = self.ids[used].clone(), self.start[used].tolist()
        if live is None:
            return ids, starts
        pos, tok = live[0].reshape(-1).cpu(), live[1].reshape(-1).cpu()
        sel = (pos >= self.end) & (tok >= 0)
        pos, tok = pos[sel], tok[sel]
        row_of = {s: i for i, s in enumerate(starts)}
        extra: list[torch.Tensor] = []
        for s in torch.unique(torch.div(pos, self.span_len, rounding_mode="floor") * self.span_len).tolist():
            inside = (pos >= s) & (pos < s + self.span_len)
            if s in row_of:
                ids[row_of[s], pos[inside] - s] = tok[inside].to(torch.int32)
            else:
                row = torch.full((self.span_len,), -1, dtype=torch.int32)
                row[pos[inside] - s] = tok[inside].to(torch.int32)
                row_of[s] = len(starts)
                starts.append(s)
                extra.append(row)
        return (torch.cat([ids, torch.stack(extra)]) if extra else ids), starts

    def search(self, query_ids: list[int] | torch.Tensor, budget_tokens: int, context: int = 1,
               min_gain: float = 0.3, live: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[list[int]]:
        """Spans that cover the query's rarest tokens, with `context` neighbouring spans on each side,
        merged and returned in stream order as token-id runs.

        Query terms are its tokens (IDF-weighted) and consecutive token pairs (half the pair's IDF).
        Spans are picked greedily (each with its neighbours, which count half) by the weight of the query
        terms they add that the picks so far do not hold, and picking stops once a span would add less
        than `min_gain` of the first pick. So a question about the lantern recalls the lantern's
        sentence, not also the sentences that only share its template ("The secret number for the ..."):
        those add nothing new, and a small model reading them next to the question may answer from the
        wrong one.

        `live` (positions, token ids of the cache's slots) adds the window's spans not archived yet as
        candidates: when the fact is still in the window, its span wins the first pick and the
        look-alikes in the archive add nothing; without it, the best archived look-alike (a distractor)
        would be re-read right in front of the question and answered from."""
        if len(self) == 0 or budget_tokens <= 0:
            return []
        ids, starts = self._candidates(live)
        n_spans = len(starts)
        qa = torch.as_tensor(query_ids, dtype=torch.int32)
        q = torch.unique(qa)
        present = (ids[:, :, None] == q[None, None, :]).any(dim=1)  # [spans, query tokens]
        df = present.sum(0).float()
        weight = torch.log((n_spans + 1) / (df + 1)) * (df > 0)
        idf = dict(zip(q.tolist(), weight.tolist()))
        pairs = list(dict.fromkeys(zip(qa[:-1].tolist(), qa[1:].tolist())))
        if pairs:  # a pair counts where the span holds it consecutively
            a, b = ids[:, :-1], ids[:, 1:]
            hits = torch.stack([((a == x) & (b == y)).any(1) for x, y in pairs], dim=1)
            present = torch.cat([present, hits], dim=1)
            weight = torch.cat([weight, torch.tensor([0.5 * (idf[x] + idf[y]) for x, y in pairs])])
        # a span is judged with its neighbours (what a pick re-reads), theirs at half weight: a fact cut by
        # a span boundary ("... for the" | "vault is 7690137.") still counts whole, and the pick is centred
        # on the span that holds the match, not on a neighbour whose other side adds a common word
        row_of_start = {int(s): i for i, s in enumerate(starts)}
        window = [[row_of_start[s + k * self.span_len] for k in range(-context, context + 1)
                   if s + k * self.span_len in row_of_start] for s in starts]
        reach = torch.stack([present[w].any(0) for w in window])
        covered = torch.zeros(present.shape[1], dtype=torch.bool)
        open_ = torch.ones(n_spans, dtype=torch.bool)
        chosen: set[int] = set()
        first_gain = None
        while len(chosen) * self.span_len < budget_tokens and bool(open_.any()):
            new = weight * ~covered
            gain = (present.float() * new).sum(1) + 0.5 * ((reach & ~present).float() * new).sum(1)
            gain = gain.masked_fill(~open_, -1.0)
            i = int(torch.argmax(gain))
            g = float(gain[i])
            if g <= 0 or (first_gain is not None and g < min_gain * first_gain):
                break
            first_gain = first_gain if first_gain is not None else g
            covered |= reach[i]
            open_[i] = False
            for j in sorted(window[i], key=lambda j: abs(starts[j] - starts[i])):  # the span first, then neighbours
                if len(chosen) * self.span_len >= budget_tokens:
                    break
                chosen.add(int(starts[j]))
        runs: list[list[int]] = []
        prev_end = None
        for s in sorted(chosen):
            row_ids = [t for t in ids[row_of_start[s]].tolist() if t >= 0]
            if prev_end == s and runs:
                runs[-1].extend(row_ids)
            else:
                runs.append(row_ids)
            prev_end = s + self.span_len
        return runs
