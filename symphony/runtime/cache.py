"""BoundedCache: a `transformers` Cache with a fixed number of slots per layer.

Slots are kept in stream order and fall into three regions:

    | sinks (first tokens) | ledger (salient spans) | window (most recent tokens) |

A slot's RoPE position is its index, so the model never sees a position beyond
`capacity + segment_len` however long the stream. `update()` only appends (so every forward is
exactly the base model's attention over the kept slots); `compact()`, called between forwards by
the engine, evicts down to capacity and re-rotates the surviving keys to their new slot index
(StreamingLLM's position shift). Eviction decisions are shared by all layers, so the cache also
knows which token id and stream position each slot holds (the ledger the copy head reads).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer


class RopeRotator:
    """Shifts RoPE-rotated keys by a position delta: R(p + d) k = R(d) (R(p) k).

    The stored keys already carry the model's attention scaling, so the shift is a pure rotation.
    Works for the rotate-half convention (Llama, Qwen2, Mistral, ...), including partial rotary dims.
    """

    def __init__(self, inv_freq: torch.Tensor):
        self.inv_freq = inv_freq.detach().float().cpu()
        self.rotary_dim = 2 * self.inv_freq.numel()

    @classmethod
    def from_model(cls, model) -> "RopeRotator | None":
        base = getattr(model, "model", model)
        rotary = getattr(base, "rotary_emb", None)
        inv_freq = getattr(rotary, "inv_freq", None)
        return cls(inv_freq) if isinstance(inv_freq, torch.Tensor) else None

    def shift(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """keys: [B, H, N, D]; delta: [N] integer shift per slot."""
        if keys.shape[-2] == 0 or not bool((delta != 0).any()):
            return keys
        # the angle in float64: |delta| * inv_freq reaches thousands of radians, where float32 loses ~1e-4
        freqs = delta.to(torch.float64).cpu()[:, None] * self.inv_freq.double()[None, :]  # [N, rot/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().float().to(keys.device), emb.sin().float().to(keys.device)
        rot, rest = keys[..., : self.rotary_dim].float(), keys[..., self.rotary_dim :]
        half = self.rotary_dim // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = (rot * cos + rotated * sin).to(keys.dtype)
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


class BoundedLayer(DynamicLayer):
    """One layer's keys/values. Appends on update; the owning BoundedCache selects slots on compaction."""

    def select(self, index: torch.Tensor, delta: torch.Tensor, rope: RopeRotator | None) -> None:
        if not self.is_initialized or self.keys.numel() == 0:
            return
        idx = index.to(self.keys.device)
        keys = self.keys.index_select(-2, idx)
        self.keys = rope.shift(keys, delta) if rope is not None else keys
        self.values = self.values.index_select(-2, idx)


@dataclass
class Budget:
    sinks: int
    ledger: int
    window: int

    @property
    def capacity(self) -> int:
        return self.sinks + self.ledger + self.window


class BoundedCache(Cache):
    """Fixed-size KV cache: attention sinks + a ledger of salient spans + a recent window."""

    def __init__(
        self,
        num_layers: int,
        sinks: int = 4,
        ledger: int = 512,
        window: int = 1024,
        span_len: int = 16,
        smooth_radius: int = 4,
        rope: RopeRotator | None = None,
    ):
        super().__init__(layers=[BoundedLayer() for _ in range(num_layers)])
        self.budget = Budget(sinks, ledger, window)
        self.span_len = max(1, span_len)
        self.smooth_radius = max(0, smooth_radius)
        self.rope = rope
        self.tokens_seen = 0
        self.compactions = 0
        # per-slot metadata, shared by every layer (eviction is decided once for all layers)
        self.positions = torch.empty(0, dtype=torch.long)  # position in the stream
        self.token_ids = torch.empty(0, dtype=torch.long)  # -1 until the engine records it
        self.salience = torch.empty(0, dtype=torch.float32)
        # [n, d] float16: the hidden states the recall archive summarises its spans from (the HEP-DNA
        # retriever's layer), once the engine records any; None without a retriever
        self.features: torch.Tensor | None = None
        # called at each compaction with (positions, token_ids, salience, features) of every slot that has left
        # the window (kept in the ledger or evicted), e.g. RecallLedger.add
        self.on_archive = None
        self.last_keep: torch.Tensor | None = None  # slot indices kept by the last compaction (old numbering)

    @classmethod
    def for_model(cls, model, sinks: int, ledger: int, window: int, span_len: int = 16, smooth_radius: int = 4):
        return cls(model.config.num_hidden_layers, sinks, ledger, window, span_len, smooth_radius,
                   RopeRotator.from_model(model))

    # -- transformers Cache API -------------------------------------------------------------
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == 0:
            q = key_states.shape[-2]
            self.positions = torch.cat([self.positions, torch.arange(self.tokens_seen, self.tokens_seen + q)])
            self.token_ids = torch.cat([self.token_ids, torch.full((q,), -1, dtype=torch.long)])
            self.salience = torch.cat([self.salience, torch.zeros(q)])
            if self.features is not None:
                self.features = torch.cat([self.features, self.features.new_zeros(q, self.features.shape[1])])
            self.tokens_seen += q
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    # -- Symphony API ------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.budget.capacity

    def occupied(self) -> int:
        return int(self.positions.numel())

    def record(self, token_ids: torch.Tensor, salience: torch.Tensor | None = None,
               features: torch.Tensor | None = None) -> None:
        """Attach token ids (and salience scores, and hidden states [q, d] for the archive's summaries) to the
        most recently appended slots."""
        token_ids = token_ids.reshape(-1).long().cpu()
        q = token_ids.numel()
        if q == 0:
            return
        self.token_ids[-q:] = token_ids
        if salience is not None:
            self.salience[-q:] = salience.detach().reshape(-1).float().cpu()
        if features is not None:
            if self.features is None:
                self.features = torch.zeros(self.occupied(), features.shape[-1], dtype=torch.float16)
            self.features[-q:] = features.detach().reshape(q, -1).to(device="cpu", dtype=torch.float16)

    def _middle(self) -> torch.Tensor:
        """Slots that are neither sinks nor in the recent window: the ledger's candidates."""
        n, b = self.occupied(), self.budget
        first = min(b.sinks, n)
        return torch.arange(first, max(n - b.window, first))

    def keep_indices(self) -> torch.Tensor:
        """Which slots survive compaction: sinks, the best ledger spans, the recent window (stream order)."""
        n, b = self.occupied(), self.budget
        if n <= b.capacity:
            return torch.arange(n)
        middle = self._middle()
        sinks = torch.arange(min(b.sinks, n))
        window = torch.arange(int(middle[-1]) + 1 if middle.numel() else len(sinks), n)
        return torch.cat([sinks, self._select_spans(middle, b.ledger), window])

    def _span_scores(self, middle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group middle slots into spans (by stream position) and score each span."""
        scores = self.salience[middle]
        if self.smooth_radius and scores.numel() > 1:  # a salient token lends its score to its sentence
            k = 2 * self.smooth_radius + 1
            scores = torch.nn.functional.max_pool1d(scores[None, None], k, stride=1, padding=self.smooth_radius)[0, 0]
        span_ids = torch.div(self.positions[middle], self.span_len, rounding_mode="floor")
        uniq, inverse = torch.unique_consecutive(span_ids, return_inverse=True)
        totals = torch.zeros(len(uniq)).index_add_(0, inverse, scores)
        counts = torch.zeros(len(uniq)).index_add_(0, inverse, torch.ones_like(scores))
        return inverse, totals / counts

    def _select_spans(self, middle: torch.Tensor, budget: int) -> torch.Tensor:
        if budget <= 0 or middle.numel() == 0:
            return middle[:0]
        if middle.numel() <= budget:
            return middle
        inverse, span_score = self._span_scores(middle)
        sizes = torch.bincount(inverse, minlength=len(span_score))
        keep_span = torch.zeros(len(span_score), dtype=torch.bool)
        left = budget
        # best spans first; ties go to the later span (fresher context)
        order = sorted(range(len(span_score)), key=lambda i: (-float(span_score[i]), -i))
        for i in order:
            if sizes[i] <= left:
                keep_span[i] = True
                left -= int(sizes[i])
                if left == 0:
                    break
        keep = keep_span[inverse]
        if left > 0:  # no whole span fits the rest: top up with the best remaining tokens, so the
            # cache always holds exactly `capacity` slots (constant bytes at every length)
            rest = torch.nonzero(~keep)[:, 0]
            best = rest[torch.argsort(span_score[inverse[rest]], descending=True, stable=True)[:left]]
            keep[best] = True
        return middle[keep]

    def compact(self) -> int:
        """Evict down to capacity; returns the number of evicted slots. Cheap no-op when under budget."""
        n = self.occupied()
        if n <= self.capacity:
            return 0
        keep = self.keep_indices()
        delta = torch.arange(len(keep)) - keep  # slot index == RoPE position, before and after
        if self.on_archive is not None:
            middle = self._middle()
            feats = None if self.features is None else self.features[middle]
            self.on_archive(self.positions[middle], self.token_ids[middle], self.salience[middle], feats)
        for layer in self.layers:
            layer.select(keep, delta, self.rope)
        self.positions = self.positions[keep]
        self.token_ids = self.token_ids[keep]
        self.salience = self.salience[keep]
        if self.features is not None:
            self.features = self.features[keep]
        self.last_keep = keep
        self.compactions += 1
        return n - len(keep)

    def regions(self) -> dict[str, int]:
        n, b = self.occupied(), self.budget
        sinks = min(b.sinks, n)
        window = min(b.window, n - sinks)
        return {"sinks": sinks, "ledger": n - sinks - window, "window": window}

    def nbytes(self) -> int:
        """Bytes held by key/value tensors of all layers (the metadata adds 20 bytes per slot)."""
        return cache_nbytes(self)


def cache_nbytes(cache) -> int:
    """Bytes of KV held by any transformers Cache (BoundedCache or DynamicCache)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            total += layer.keys.nbytes + layer.values.nbytes
    return total
