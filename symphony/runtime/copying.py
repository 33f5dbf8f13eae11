"""Exact copying: a reply that has started to copy re-read text goes on copying it, token for token.

A small model reading a fact right before the question knows *what* to answer but can drop or change a
character of a long value (6373544 -> 637354, a UUID cut short). Once the reply's last `min_match` tokens occur
in the source (the text recall re-read), the token that follows them there is taken instead of the model's
choice, provided the model ranks it among its `top_k`: the model still decides whether to copy and where the
copy ends (a continuation it finds implausible is never forced), the source decides the characters.
Where the reply's tail occurs more than once, the occurrences matching the longest tail win, and among their
continuations the one the model prefers.
"""
from __future__ import annotations

import torch


class CopyRule:
    def __init__(self, source: list[int], min_match: int = 3, top_k: int = 5, max_match: int = 64):
        self.source = [int(t) for t in source]
        self.min_match, self.top_k, self.max_match = max(1, min_match), max(1, top_k), max_match
        self._at: dict[tuple[int, ...], list[int]] = {}  # the `min_match` tokens -> where they end in the source
        for end in range(self.min_match, len(self.source)):
            self._at.setdefault(tuple(self.source[end - self.min_match:end]), []).append(end)

    def continuations(self, reply: list[int]) -> list[int]:
        """Tokens that continue the longest tail of `reply` found in the source (none below `min_match`)."""
        if len(reply) < self.min_match:
            return []
        ends = self._at.get(tuple(reply[-self.min_match:]), [])
        best, found = 0, []
        for end in ends:
            n = self.min_match
            while n < min(len(reply), end, self.max_match) and self.source[end - n - 1] == reply[-n - 1]:
                n += 1
            if n > best:
                best, found = n, []
            if n == best:
                found.append(self.source[end])
        return list(dict.fromkeys(found))

    def choose(self, reply: list[int], logits: torch.Tensor, chosen: int) -> int:
        """The next token: a continuation of the copy the model ranks within its top `top_k`, else `chosen`."""
        options = self.continuations(reply)
        if not options or chosen in options:
            return chosen
        top = torch.topk(logits.float(), min(self.top_k, logits.numel())).indices.tolist()
        ranked = [t for t in top if t in options]
        return ranked[0] if ranked else chosen
