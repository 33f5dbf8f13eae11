"""HEP-DNA retriever: a learned summary of every archived span, so a question finds its fact by meaning.

The recall archive keeps token ids (4 B a token); the lexical search finds a fact only through the words a
question shares with it. Beside each span's ids the archive keeps `dim` more bytes: the frozen model's hidden
states at one layer (`layer`, an index into `output_hidden_states`), pooled over the span as it streamed by,
through a learned projection, unit-normalised and stored as int8. A question is encoded the same way (its own
tokens, read alone), and the spans nearest to it are candidates beside the lexical ones.

Legend: n tokens, d the model's width, k the summary's width (`dim`), s spans, b questions, m candidates.

The projection starts as a random one (nearly distance-preserving: untrained, the nearest span is the one whose
raw hidden states are nearest) and is trained contrastively (`contrastive_loss`, `fit`): a question against the
span that holds its answer and the other spans of the same document, the look-alikes included. `min_similarity`
(calibrated on a dev split) is how near a span must be before it is re-read on the summary's word alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT8_SCALE = 127.0  # a unit vector's components lie in [-1, 1]
UNCALIBRATED = 2.0  # min_similarity before calibration: no cosine reaches it


class SpanRetriever(nn.Module):
    calibrated_parameters = ("min_similarity",)

    def __init__(self, hidden_size: int, dim: int = 64, layer: int = -1, temperature: float = 0.05):
        super().__init__()
        self.layer, self.temperature = layer, temperature
        self.proj = nn.Linear(hidden_size, dim, bias=False)
        nn.init.orthogonal_(self.proj.weight)
        # the centre of the hidden states (set from data before training): pooled states share a large common
        # part that would otherwise make every span look alike
        self.register_buffer("center", torch.zeros(hidden_size))
        # above any cosine until calibrated: an untrained retriever re-reads nothing on its own word
        self.min_similarity = nn.Parameter(torch.tensor(UNCALIBRATED), requires_grad=False)

    @property
    def dim(self) -> int:
        return self.proj.out_features

    def hidden_of(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The layer this retriever reads, from a forward's `hidden_states` ([1, n, d] each) -> [n, d]."""
        return hidden_states[self.layer][0]

    def encode(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled hidden states [..., d] -> unit summaries [..., k]."""
        return F.normalize(self.proj(pooled.float() - self.center.float()), dim=-1)

    @torch.no_grad()
    def summarize_spans(self, pooled: torch.Tensor) -> torch.Tensor:
        """The recall archive's summaries: pooled hidden states [s, d] of its spans -> int8 codes [s, k]."""
        return self.quantize(self.encode(pooled.to(self.proj.weight.device)))

    @staticmethod
    def quantize(summary: torch.Tensor) -> torch.Tensor:
        """Unit summaries [..., k] -> int8 codes [..., k] (k bytes each)."""
        return (summary.detach().float() * INT8_SCALE).round().clamp(-127, 127).to(torch.int8)

    def contrastive_loss(self, questions: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE: questions [b, d] and each one's candidate spans [b, m, d] (pooled hidden states), `target` [b]
        the index of the span holding the answer; `valid` [b, m] masks padding candidates."""
        q = self.encode(questions)
        c = self.encode(candidates)
        logits = torch.einsum("bk,bmk->bm", q, c) / self.temperature
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        return F.cross_entropy(logits, target)


def similarity(query: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Cosine of a unit query [k] with int8 codes [s, k] -> [s] (0 for an all-zero code: no summary)."""
    rows = codes.float()
    return (rows @ query.float().cpu()) / rows.norm(dim=-1).clamp(min=1e-6)


def fit(retriever: SpanRetriever, questions: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
        valid: torch.Tensor | None = None, steps: int = 200, lr: float = 1e-2, weight_decay: float = 1e-4,
        batch: int = 64, seed: int = 0) -> list[float]:
    """Train the projection on extracted features (see `contrastive_loss`); returns the loss per step. The
    frozen model is not needed here: the features were read once, while the documents streamed by."""
    device = retriever.proj.weight.device
    questions, candidates, target = questions.to(device), candidates.to(device), target.to(device)
    valid = torch.ones(candidates.shape[:2], dtype=torch.bool) if valid is None else valid
    valid = valid.to(device)
    with torch.no_grad():  # centre on the spans' mean (where the summaries are compared)
        retriever.center.copy_(candidates[valid].float().mean(0))
    opt = torch.optim.AdamW(retriever.proj.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    n = questions.shape[0]
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[:batch]
        loss = retriever.contrastive_loss(questions[idx], candidates[idx], target[idx], valid[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
