"""Salience: how much each streamed token deserves an exact slot in the ledger.

A scorer sees each segment once, right after its forward pass, and returns one score per token.
The rarity oracle combines surprisal (-log p under the model, from logits the forward computed
anyway) with novelty within the stream (an n-gram not seen before: a planted fact is usually
new text, while its digits alone may be unsurprising). A learned router (HEP-DNA) implements
the same `SalienceScorer` interface and can replace or join it.
"""
from __future__ import annotations

from typing import Protocol

import torch

from symphony.config import SalienceConfig


class SalienceScorer(Protocol):
    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor, prev_logits: torch.Tensor | None,
                 positions: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [q], logits [q, V] (logits[t] predicts token t+1), prev_logits [V] predicts input_ids[0],
        positions [q] stream positions, hidden [q, D] optional last hidden states. Returns scores [q]."""
        ...


def surprisal(input_ids: torch.Tensor, logits: torch.Tensor, prev_logits: torch.Tensor | None) -> torch.Tensor:
    """-log p(x_t | x_<t) in nats for each token of a segment; 0 for the first token of the stream."""
    q = input_ids.numel()
    out = torch.zeros(q, dtype=torch.float32)
    if q > 1:
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        out[1:] = -lp.gather(-1, input_ids[1:, None].to(lp.device))[:, 0].cpu()
    if prev_logits is not None:
        out[0] = -torch.log_softmax(prev_logits.float(), dim=-1)[input_ids[0]].cpu()
    return out


class NoveltyTable:
    """Fixed-size hash table of n-grams seen so far in the stream (constant memory at any length).

    A token is novel when the n-gram ending at it was never seen (or hashes to an empty bucket)."""

    _MULT = 1000003

    def __init__(self, ngram: int = 3, bits: int = 20):
        self.ngram = max(1, ngram)
        self.mask = (1 << bits) - 1
        self.seen = torch.zeros(1 << bits, dtype=torch.bool)
        self.tail = torch.empty(0, dtype=torch.long)  # last n-1 ids of the previous segment

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([self.tail, input_ids.cpu().long()])
        n = self.ngram
        h = torch.zeros(ids.numel(), dtype=torch.long)
        for k in range(n):  # polynomial rolling hash of the n-gram ending at each position
            shifted = torch.zeros_like(ids)
            shifted[k:] = ids[: ids.numel() - k] + 1
            h = (h * self._MULT + shifted) & 0x7FFFFFFFFFFF
        buckets = (h ^ (h >> 17)) & self.mask
        buckets = buckets[self.tail.numel():]
        q = buckets.numel()
        # a repeat inside this segment is not novel either: only the first occurrence counts
        uniq, inverse = torch.unique(buckets, return_inverse=True)
        first = torch.full((len(uniq),), q, dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(q), "amin")
        novel = (~self.seen[buckets]) & (first[inverse] == torch.arange(q))
        self.seen[buckets] = True
        self.tail = ids[-(n - 1):] if n > 1 else ids[:0]
        return novel.float()


class RarityOracle:
    """Surprisal + stream novelty; the default scorer."""

    def __init__(self, cfg: SalienceConfig):
        self.cfg = cfg
        self.novelty = NoveltyTable(cfg.ngram, cfg.novelty_table_bits)

    def __call__(self, input_ids, logits, prev_logits, positions, hidden=None):
        s = torch.zeros(input_ids.numel())
        if self.cfg.surprisal_weight:
            s += self.cfg.surprisal_weight * surprisal(input_ids, logits, prev_logits)
        if self.cfg.novelty_weight:
            s += self.cfg.novelty_weight * self.novelty(input_ids)
        return s
