"""Exact copying: a reply that has started to copy re-read text goes on copying it, token for token.

A small model reading a fact right before the question knows *what* to answer but can drop or change a
character of a long value (6373544 -> 637354, a UUID cut short), or, with many look-alike facts in view, start
the value of the wrong one. Two rules, both on the assistant's turn so far (a reply prefix, if any, then the
generated tokens), both only where the model itself ranks the source's token among its `top_k`:

- **continue**: once the turn's last `min_match` tokens occur in the source (the text recall re-read), the token
  that follows them there is taken instead of the model's choice. Where the tail occurs more than once, the
  occurrences matching the longest tail win, and among their continuations the one the model prefers. A copy
  ends with its fact (`breaks`: the newline between re-read facts); the model decides what comes after.
- **resume**: where the turn restated a run of the source (the asked key, `min_match` tokens or more) and then
  went on in its own words ("... mentioned in the provided text is"), within `gap` tokens, the copy may resume
  at one of the `lead` source tokens after that run (" is", ":", the value's first token), if the model rates it
  within `margin` (logits) of its own choice, never past the end of the fact. The copy then continues from there.
  The same holds where a copy's next token is punctuation the model declines ("strange-bell is" then " 1", where
  the fact goes on ": b80e..."): a value's own token it declines is never skipped over.

The model still decides whether to copy and where the copy ends (a continuation it finds implausible is never
forced), and punctuation and layout (`content`: only tokens with a letter or digit are put in place of its
choice, so a list of values keeps the model's line breaks rather than each fact's full stop); the source decides
the characters of what it copies.
"""
from __future__ import annotations

import torch


class CopyRule:
    def __init__(self, source: list[int], min_match: int = 3, top_k: int = 5, max_match: int = 64,
                 prefix: list[int] | tuple[int, ...] = (), gap: int = 8, lead: int = 3, margin: float = 2.0,
                 breaks: list[int] | tuple[int, ...] = (), content: torch.Tensor | None = None):
        self.source = [int(t) for t in source]
        self.prefix = [int(t) for t in prefix]  # the turn's start before the generated tokens (a reply prefix)
        self.min_match, self.top_k, self.max_match = max(1, min_match), max(1, top_k), max_match
        self.gap, self.lead, self.margin = gap, lead, margin
        self.breaks = set(breaks)  # tokens between re-read facts: a resumed copy never starts past one
        self.content = content  # bool [V]: tokens the rule may put in place of the model's (letters, digits)
        self._at: dict[tuple[int, ...], list[int]] = {}  # the `min_match` tokens -> where they end in the source
        for end in range(self.min_match, len(self.source)):
            self._at.setdefault(tuple(self.source[end - self.min_match:end]), []).append(end)
        self._next: int | None = None  # the source position a copy in progress continues at

    def _tail_positions(self, turn: list[int]) -> list[int]:
        """Source positions that continue the longest tail of `turn` found there (none below `min_match`)."""
        if len(turn) < self.min_match:
            return []
        ends = self._at.get(tuple(turn[-self.min_match:]), [])
        best, found = 0, []
        for end in ends:
            n = self.min_match
            while n < min(len(turn), end, self.max_match) and self.source[end - n - 1] == turn[-n - 1]:
                n += 1
            if n > best:
                best, found = n, []
            if n == best:
                found.append(end)
        return [p for p in found if self._within_fact(p)]

    def _within_fact(self, p: int) -> bool:
        """A copy ends with its fact: never into the break after it, nor on into the next fact."""
        return self.source[p] not in self.breaks and (p == 0 or self.source[p - 1] not in self.breaks)

    def _resume_positions(self, turn: list[int], last: int) -> list[int]:
        """The `lead` source positions after the latest source run the turn restated, ending at `last` or up to
        `gap` tokens before it."""
        for e in range(last, max(self.min_match, len(turn) - self.gap) - 1, -1):
            ends = self._at.get(tuple(turn[e - self.min_match:e]), [])
            if ends:
                return [p for end in ends for p in self._lead(end)]
        return []

    def _lead(self, end: int):
        for p in range(end, min(end + self.lead, len(self.source))):
            if not self._within_fact(p):
                return
            yield p

    def _is_content(self, t: int) -> bool:
        return self.content is None or not 0 <= t < len(self.content) or bool(self.content[t])

    def continuations(self, reply: list[int]) -> list[int]:
        """Tokens that continue the longest tail of the turn (prefix + `reply`) found in the source."""
        return list(dict.fromkeys(self.source[p] for p in self._tail_positions(self.prefix + list(reply))))

    def choose(self, reply: list[int], logits: torch.Tensor, chosen: int) -> int:
        """The next token: the continued or resumed copy's token where the model ranks it high enough, else
        `chosen`."""
        turn = self.prefix + list(reply)
        positions = self._tail_positions(turn)
        if not positions and self._next is not None and turn and self._next < len(self.source) \
                and self.source[self._next - 1] == turn[-1]:
            # a resumed copy goes on before its own tail is `min_match` long
            positions = [self._next] if self._within_fact(self._next) else []
        self._next = None
        top = torch.topk(logits.float(), min(self.top_k, logits.numel()))
        ranked = list(zip(top.indices.tolist(), top.values.tolist()))
        if positions:
            token = self._pick(positions, [t for t, _ in ranked], chosen)
            if token is not None or any(self._is_content(self.source[p]) for p in positions):
                return chosen if token is None else token
            # the model declined the copy's next token, punctuation, which is never forced ("bell is" then " 1"
            # where the fact goes on ": b80e..."): the copy may resume at the value, as after a restated key
            resume = self._resume_positions(turn, len(turn))
        else:
            resume = self._resume_positions(turn, len(turn) - 1)
        floor = ranked[0][1] - self.margin
        token = self._pick(resume, [t for t, v in ranked if v >= floor], chosen)
        return chosen if token is None else token

    def _pick(self, positions: list[int], ranked: list[int], chosen: int) -> int | None:
        """`chosen` if a copy at `positions` would give it, else the best-ranked content token one would give
        (None if none); the copy then goes on after the position that gave it."""
        options = {self.source[p] for p in positions}
        if chosen in options:
            token = chosen
        else:
            token = next((t for t in ranked if t in options and self._is_content(t)), None)
            if token is None:
                return None
        self._next = next(p for p in positions if self.source[p] == token) + 1
        return token
