"""HEP-DNA exact pointer: a learned salience router and a pointer-generator copy head.

- `SalienceRouter`: token hidden state -> probability that the token must be kept exactly. A plain
  sigmoid head trained with binary cross-entropy, so it always gets gradients (the original's
  hard Gumbel flag fed an index op and never learned). It refines the rarity oracle as a
  `SalienceScorer` for the engine's ledger.
- `CopyHead`: from the current hidden state, a distribution over the tokens held by the ledger
  (keys are the ledger tokens' input embeddings, so no extra state is stored), mixed with the LM
  head's distribution by a learned gate: p = (1 - g) p_lm + g p_copy. The gate's scale starts at
  exactly zero, so an untrained copy head leaves the model's distribution unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SalienceRouter(nn.Module):
    def __init__(self, hidden_size: int, bias_init: float = -2.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, bias_init)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> keep logits [...] (per token, no mixing across tokens: trivially causal)."""
        return self.proj(self.norm(hidden.float()))[..., 0]

    def loss(self, hidden: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self(hidden)
        loss = F.binary_cross_entropy_with_logits(logits, keep.float(), reduction="none")
        if mask is not None:
            return (loss * mask).sum() / mask.sum().clamp(min=1)
        return loss.mean()


class RouterScorer:
    """The router as a `SalienceScorer`, optionally on top of another scorer (e.g. the rarity oracle)."""

    def __init__(self, router: SalienceRouter, base=None, weight: float = 1.0):
        self.router, self.base, self.weight = router, base, weight

    @torch.no_grad()
    def __call__(self, input_ids, logits, prev_logits, positions, hidden=None):
        if hidden is None:
            raise ValueError("the learned router needs the segment's hidden states")
        score = self.weight * torch.sigmoid(self.router(hidden)).float().cpu()
        if self.base is not None:
            score = score + self.base(input_ids, logits, prev_logits, positions, hidden)
        return score


class CopyHead(nn.Module):
    calibrated_parameters = ("gate", "gate_scale")  # phase 6 calibrates the copy gate

    def __init__(self, hidden_size: int, embed_size: int, key_size: int = 128):
        super().__init__()
        self.q = nn.Linear(hidden_size, key_size, bias=False)
        self.k = nn.Linear(embed_size, key_size, bias=False)
        self.gate = nn.Linear(hidden_size, 1)
        self.gate_scale = nn.Parameter(torch.zeros(()))  # exactly 0: an untrained head changes nothing
        self.scale = 1.0 / math.sqrt(key_size)

    def copy_distribution(self, hidden: torch.Tensor, src_embeds: torch.Tensor, src_ids: torch.Tensor,
                          vocab_size: int, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, D]; src_embeds [B, N, E], src_ids [B, N]; src_mask [B, T, N] (True = may point)
        -> p_copy [B, T, V]: attention over source tokens scattered onto their ids."""
        scores = torch.einsum("btk,bnk->btn", self.q(hidden.float()), self.k(src_embeds.float())) * self.scale
        if src_mask is not None:
            scores = scores.masked_fill(~src_mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with nothing to point at copies nothing
        out = torch.zeros(*attn.shape[:2], vocab_size, dtype=attn.dtype, device=attn.device)
        return out.scatter_add_(-1, src_ids[:, None, :].expand_as(attn), attn)

    def gate_value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gate_scale.clamp(0, 1) * torch.sigmoid(self.gate(hidden.float()))[..., 0]

    def forward(self, hidden, lm_logits, src_embeds, src_ids, src_mask=None) -> torch.Tensor:
        """Mixed log-probabilities log((1-g) p_lm + g p_copy), [B, T, V]."""
        p_copy = self.copy_distribution(hidden, src_embeds, src_ids, lm_logits.shape[-1], src_mask)
        return self.mix(hidden, lm_logits, p_copy)

    def mix(self, hidden, lm_logits, p_copy) -> torch.Tensor:
        p_lm = torch.softmax(lm_logits.float(), dim=-1)
        g = self.gate_value(hidden)[..., None]
        return torch.log(((1 - g) * p_lm + g * p_copy).clamp_min(1e-30))

    @torch.no_grad()
    def project_(self) -> None:
        """After an optimizer step: keep the gate scale in [0, 1] (projected gradient). Clamping only in
        the forward would let a step push it below 0, where the clamp passes no gradient and the copy
        head could never come back."""
        self.gate_scale.clamp_(0.0, 1.0)


class PointerHeads(nn.Module):
    """HEP-DNA's trainable parts, kept on the model as `symphony_pointer` so they save with the adapters."""

    def __init__(self, hidden_size: int, embed_size: int):
        super().__init__()
        self.router = SalienceRouter(hidden_size)
        self.copy_head = CopyHead(hidden_size, embed_size)  # gate_scale starts at exactly 0


def causal_source_mask(query_pos: torch.Tensor, src_pos: torch.Tensor) -> torch.Tensor:
    """[T] query positions, [N] source positions -> [1, T, N]: a query may point only at earlier tokens."""
    return (src_pos[None, :] < query_pos[:, None])[None]
