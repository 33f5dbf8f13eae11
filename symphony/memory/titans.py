"""Titans neural long-term memory (Behrouz, Zhong, Mirrokni, arXiv 2501.00663), written from the paper.

The memory is a small MLP M_W whose weights W are the state (per sequence and head). Per chunk n of C
tokens, with keys k_i, values v_i, queries q_i projected from x and write weights m_i (write_mask):

    g_n = clip( ∇_W Σ_i m_i ‖M_{W_{n-1}}(k_i) − v_i‖² / ρ_n )  surprise at the CURRENT weights (eq. 12)
    S_n = η_n · S_{n-1} − θ_n · g_n                           momentum, past surprise (eq. 10)
    W_n = (1 − α_n) · W_{n-1} + S_n                           forgetting (eq. 13)
    y_i = M_{W_{n-1}}(q_i)                                    retrieval (eq. 15) before the chunk's update

- Recurrent: every gradient is taken at the weights left by the previous chunk. titans-pytorch by
  default takes all of them at the initial weights W_0 (batch_size=None), a linear-attention-like
  shortcut; here there is no such shortcut (tests compare against a loop with autograd at W_{n-1}).
- Retrieval convention: tokens of chunk n read W_{n-1}, the memory before their own chunk is written,
  as MAC's h_t = M*_{t-1}(q_t) (eq. 21). Reading W_n would leak the chunk's later tokens into earlier
  outputs; within a chunk the caller's attention window covers what the memory has not yet stored.
- Gates per chunk and head, from the chunk mean of per-token logits of x: θ_n = max_lr·sigmoid(·)
  (inner learning rate), η_n = sigmoid(·) (momentum), α_n = sigmoid(·) (forget). Gate weights start at
  zero, so at init the gates are the configured constants.
- Step normalisation (our addition, `normalize_step`): the paper sums the per-token losses over the
  chunk, so the curvature of a linear memory is 2·λ_max(Σ m_i k_i k_iᵀ), which ranges from 2 (orthogonal
  unit keys) to 2C (identical keys): no fixed θ is both useful and stable (titans-pytorch's divergence
  reports). We divide the chunk loss by ρ_n = max(1, bound on λ_max of the chunk's key Gram matrix
  G_ij = √(m_i m_j) k_i·k_j), an upper bound from ‖(G/tr G)^8‖_F^(1/8)·tr G ([C×C] matmuls, tight
  within a few %). For a linear memory any θ < 1 is then a stable step (heavy-ball: θ < 1 + η), and
  orthogonal keys are still written at the paper's full strength (ρ = 1; θ = 1/2 writes them exactly).
  The MLP is M(k) = W2 silu(W1 k)/√f with O(1) weight entries, so its curvature is of the same order.
  normalize_step=False gives the paper's plain sum.
- Stability: the surprise is clipped to an RMS per weight entry <= max_grad_rms per (sequence, head),
  over all weight tensors together (a safety net: it is rarely active at these scales). With α > 0 the
  weights stay bounded: rms(S) <= max_lr·max_grad_rms/(1 − η), rms(W) <= rms(W_0) + rms(S)/α.
- Streaming: a call may end mid-chunk; those tokens are read at the current weights and kept in a
  fixed-size pending buffer [C tokens] until their chunk is complete, so any split of a stream into
  calls gives the same outputs and final state as one call. State bytes never change.
- Trainable: the per-chunk gradient is closed-form (plain tensor ops, no torch.func), so backprop through
  the inner updates (second order included) reaches W_0, projections and gates. Detach the state
  between calls (`symphony.memory.detach_state`) for truncated BPTT.
- Bounded read-out (`read_norm`, on in the engine's config): each head's M_W(q) is RMS-normalised before
  `to_out`, as titans-pytorch's post-retrieval RMSNorm. However far the weights drift on a stream much
  longer than the training samples, the branch's output then stays ‖to_out‖-sized; an unnormalised read-out
  follows the drifting weights and can blow the model up far past the training length.
- The memory math runs in float32 (float64 if the module is float64) whatever the model dtype.

Research extensions (off by default; with both off every output and state is what it was without them):
- Symplectic gating (`use_symplectic_gating`): per chunk and head a complexity c_n ∈ [0, 1) from the chunk's
  keys (tanh of a wedge product of consecutive projected keys, optionally blended with a DMD residual; see
  `symphony.memory.complexity`) attenuates forgetting: α_n ← α_n · (1 − s · c_n), s = sigmoid(learned) per head.
- Manifold paging (`num_pages` P > 1): the weights and momentum get a pages axis [b, h, P, ...]; per
  (sequence, head) one page is active. Before chunk n is written, if c_n > page_threshold the active page
  moves round-robin to the next one, p ← (p + 1) mod P, and the switch is counted in the state
  (`page_switches(state)`). Eqs. 10-13 then apply to the active page only; the other pages are frozen (no
  update, no forgetting, momentum kept). Reads pool over pages: y = Σ_p π_p M_{W_p}(q), π = softmax of a
  learned per-head logit vector (zeros at init: the mean over pages). All pages start at W_0, so at init a
  paged memory reads exactly as an unpaged one. Paging computes the complexity even with gating off (then
  from fixed random projections).

einops legend: b batch, h heads, s tokens, c tokens of a chunk, k key dim, d value dim, f MLP hidden,
g gates (lr, momentum, forget), P pages, (b h) batch and heads flattened as the batch of per-memory matmuls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import Tensor, nn

from symphony.memory.complexity import chunk_complexity, gated_forget

__all__ = ["TitansConfig", "TitansMemory", "TitansState", "mlp_apply", "mlp_grads", "gram_bound", "clip_grads",
           "memory_step", "page_switches"]


@dataclass
class TitansConfig:
    dim: int = 576  # model hidden size (input and output of the module)
    heads: int = 1
    head_dim: int = 0  # key/value dim per head; 0 -> dim // heads
    hidden: int = 0  # memory MLP hidden width f; 0 -> 2 * head_dim
    depth: int = 2  # 1: linear memory M(k) = W k; 2: M(k) = W2 silu(W1 k) / sqrt(f)
    chunk_size: int = 64  # tokens per surprise step
    max_lr: float = 1.0  # theta in (0, max_lr)
    lr_init: float = 0.5  # initial theta (inner learning rate; < 1 is stable for a linear memory)
    momentum_init: float = 0.5  # initial eta (0.9 lags: the latest chunks are recalled worse)
    forget_init: float = 1e-3  # initial alpha per chunk: half-life ln2/alpha chunks (~44k tokens at C=64)
    max_grad_rms: float = 1.0  # clip of the surprise's RMS per weight entry, per (sequence, head)
    normalize_step: bool = True  # divide the chunk loss by the key Gram's spectral bound (stable θ < 1)
    # research extensions (module docstring; symphony/memory/complexity.py), off by default
    use_symplectic_gating: bool = False  # forget gate α attenuated by the chunk's complexity, learned scale
    complexity_blend: float = 0.0  # weight of the DMD-residual signal in the complexity (0: wedge only)
    complexity_dim: int = 0  # planes p of the wedge projection; 0 -> head_dim
    num_pages: int = 1  # manifold paging: page groups of memory weights per head (1 = off)
    page_threshold: float = 0.5  # the active page switches when a chunk's complexity exceeds this
    read_norm: bool = False  # RMS-normalise each head's read-out M_W(q) before to_out (bounded read-out)


class TitansState(NamedTuple):
    weights: tuple[Tensor, ...]  # memory MLP weights, each [b, h, out, in]
    momentum: tuple[Tensor, ...]  # S, same shapes
    pending_k: Tensor  # [b, h, C, k] keys of the incomplete chunk (zeros past `pending`)
    pending_v: Tensor  # [b, h, C, d]
    pending_gates: Tensor  # [b, h, C, 3] gate logits (lr, momentum, forget)
    pending_mask: Tensor  # [b, C] write weights
    pending: int  # tokens in the incomplete chunk, < C
    # paging only (num_pages > 1; None otherwise). Weights and momentum are then [b, h, P, out, in].
    active_page: Tensor | None = None  # [b, h] int64, the page chunks are written to
    page_switches: Tensor | None = None  # [b, h] int64, page switches so far


def page_switches(state: TitansState) -> Tensor:
    """Page switches so far per (sequence, head) [b, h] int64; zeros for a memory without paging."""
    if state.page_switches is not None:
        return state.page_switches
    w = state.weights[0]
    return torch.zeros(w.shape[:2], dtype=torch.long, device=w.device)


# ---- functional core (batch axis = one memory per sequence and head) -------------------------------

def mlp_apply(weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """M_W(x) for x [B, c, k]: depth 1 -> W x; depth 2 -> W2 silu(W1 x) / sqrt(f). Weights [B, out, in]."""
    if len(weights) == 1:
        return einsum(x, weights[0], "B c i, B o i -> B c o")
    w1, w2 = weights
    act = F.silu(einsum(x, w1, "B c i, B f i -> B c f"))
    return einsum(act, w2, "B c f, B o f -> B c o") / math.sqrt(w2.shape[-1])


def gram_bound(k: Tensor, mask: Tensor, squarings: int = 3) -> Tensor:
    """Upper bound on λ_max(Σ_i m_i k_i k_iᵀ) for k [B, c, k], mask [B, c] -> [B]:
    ‖(G/tr G)^(2^p)‖_F^(1/2^p) · tr G with G_ij = √(m_i m_j) k_i·k_j (same non-zero spectrum)."""
    km = k * mask.clamp(min=0).sqrt()[..., None]
    gram = einsum(km, km, "B i k, B j k -> B i j")
    tr = gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1e-12)
    x = gram / tr[:, None, None]  # eigenvalues in [0, 1]: powers cannot overflow
    for _ in range(squarings):
        x = x @ x
    return x.flatten(1).norm(dim=-1) ** (1 / 2 ** squarings) * tr


def mlp_grads(weights: tuple[Tensor, ...], k: Tensor, v: Tensor, mask: Tensor,
              normalize: bool = True) -> tuple[Tensor, ...]:
    """∇_W of Σ_i mask_i ‖M_W(k_i) − v_i‖² / ρ, closed form; k [B, c, k], v [B, c, d], mask [B, c].
    ρ = max(1, gram_bound(k, mask)) if normalize else 1."""
    w8 = 2 * mask
    if normalize:
        w8 = w8 / gram_bound(k, mask).clamp(min=1.0)[:, None]
    if len(weights) == 1:
        gy = (mlp_apply(weights, k) - v) * w8[..., None]
        return (einsum(gy, k, "B c o, B c i -> B o i"),)
    w1, w2 = weights
    pre = einsum(k, w1, "B c i, B f i -> B c f")
    sig = pre.sigmoid()
    act = pre * sig / math.sqrt(w1.shape[-2])  # the 1/sqrt(f) of mlp_apply, folded into the activation
    gy = (einsum(act, w2, "B c f, B o f -> B c o") - v) * w8[..., None]
    g2 = einsum(gy, act, "B c o, B c f -> B o f")
    gact = einsum(gy, w2, "B c o, B o f -> B c f") / math.sqrt(w1.shape[-2])
    gpre = gact * sig * (1 + pre * (1 - sig))  # silu'(x) = σ(x)(1 + x(1 − σ(x)))
    g1 = einsum(gpre, k, "B c f, B c i -> B f i")
    return g1, g2


def clip_grads(grads: tuple[Tensor, ...], max_rms: float) -> tuple[Tensor, ...]:
    """Scale each memory's gradient (all tensors together) to an RMS per entry <= max_rms."""
    ms = sum(g.pow(2).flatten(1).sum(-1) for g in grads) / sum(g[0].numel() for g in grads)
    scale = (max_rms / (ms + 1e-24).sqrt()).clamp(max=1.0)
    return tuple(g * scale.view(-1, *([1] * (g.dim() - 1))) for g in grads)


def memory_step(weights: tuple[Tensor, ...], momentum: tuple[Tensor, ...], k: Tensor, v: Tensor, mask: Tensor,
                lr: Tensor, eta: Tensor, alpha: Tensor, max_grad_rms: float, normalize: bool = True):
    """One chunk of eqs. 10, 12, 13 at the current weights. lr, eta, alpha [B]. Returns (weights, momentum)."""
    grads = clip_grads(mlp_grads(weights, k, v, mask, normalize), max_grad_rms)
    new_w, new_s = [], []
    for w, s, g in zip(weights, momentum, grads):
        s = eta.view(-1, 1, 1) * s - lr.view(-1, 1, 1) * g
        new_s.append(s)
        new_w.append((1 - alpha.view(-1, 1, 1)) * w + s)
    return tuple(new_w), tuple(new_s)


def chunk_gates(logits: Tensor, max_lr: float) -> tuple[Tensor, Tensor, Tensor]:
    """Chunk mean of per-token gate logits [B, c, 3] -> (theta, eta, alpha), each [B]."""
    g = logits.mean(dim=1).sigmoid()
    return g[:, 0] * max_lr, g[:, 1], g[:, 2]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# ---- module ----------------------------------------------------------------------------------------

class TitansMemory(nn.Module):
    """x [B, S, dim] -> (out [B, S, dim], TitansState). `write_mask` [B, S] weights each token's loss
    (0 = read only); the engine can store only, e.g., evicted tokens."""

    calibrated_parameters = ("to_gates",)  # phase 6: the inner learning rate, momentum and forget gates

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.heads
        dh = cfg.head_dim or cfg.dim // cfg.heads
        hid = cfg.hidden or 2 * dh
        if h < 1 or dh < 1 or hid < 1 or cfg.chunk_size < 1 or cfg.depth not in (1, 2):
            raise ValueError(f"TitansConfig needs positive heads/head_dim/hidden/chunk_size, depth 1 or 2; got {cfg}")
        for name in ("lr_init", "momentum_init", "forget_init"):
            top = cfg.max_lr if name == "lr_init" else 1.0
            if not 0.0 < getattr(cfg, name) < top:
                raise ValueError(f"TitansConfig.{name} must lie strictly inside (0, {top}); got {getattr(cfg, name)}")
        if cfg.num_pages < 1 or not 0.0 <= cfg.complexity_blend <= 1.0 or cfg.complexity_dim < 0:
            raise ValueError("TitansConfig needs num_pages >= 1, complexity_blend in [0, 1] and complexity_dim >= 0; "
                             f"got {cfg}")
        self.heads, self.head_dim, self.hidden = h, dh, hid
        self.norm = nn.RMSNorm(cfg.dim)
        self.to_qkv = nn.Linear(cfg.dim, 3 * h * dh, bias=False)
        self.to_gates = nn.Linear(cfg.dim, 3 * h)
        nn.init.zeros_(self.to_gates.weight)
        with torch.no_grad():
            bias = torch.tensor([_logit(cfg.lr_init / cfg.max_lr), _logit(cfg.momentum_init), _logit(cfg.forget_init)])
            self.to_gates.bias.copy_(repeat(bias, "g -> (h g)", h=h))
        # W_0 per head, learned, O(1) entries: keys are unit-norm, so W1 ~ N(0, 1) gives unit pre-activations
        # and W2 ~ N(0, 1) with the 1/sqrt(f) of mlp_apply gives O(1) outputs. A linear memory starts empty.
        if cfg.depth == 1:
            self.w0 = nn.ParameterList([nn.Parameter(torch.zeros(h, dh, dh))])
        else:
            self.w0 = nn.ParameterList([nn.Parameter(torch.randn(h, hid, dh)), nn.Parameter(torch.randn(h, dh, hid))])
        self.to_out = nn.Linear(h * dh, cfg.dim, bias=False)
        # research extensions: created after every baseline parameter, so a seed gives the same baseline weights
        self.num_pages = cfg.num_pages
        self.uses_complexity = cfg.use_symplectic_gating or cfg.num_pages > 1
        if self.uses_complexity:
            # wedge projections A, B [h, p, dh]: learned with gating; fixed (a buffer) for paging alone, where
            # the thresholded switch gives them no gradient
            twist = torch.randn(2, h, cfg.complexity_dim or dh, dh) / math.sqrt(dh)
            if cfg.use_symplectic_gating:
                self.twist = nn.Parameter(twist)
            else:
                self.register_buffer("twist", twist)
        if cfg.use_symplectic_gating:
            self.complexity_scale = nn.Parameter(torch.zeros(h))  # s = sigmoid(0) = 0.5 at init
        if cfg.num_pages > 1:
            self.page_pool = nn.Parameter(torch.zeros(h, cfg.num_pages))  # softmax -> mean over pages at init

    # -- state --
    def _mem_dtype(self) -> torch.dtype:
        return torch.float64 if self.to_qkv.weight.dtype == torch.float64 else torch.float32

    def init_state(self, batch: int, device: torch.device | str | None = None) -> TitansState:
        device = device if device is not None else self.to_qkv.weight.device
        dt, c, h = self._mem_dtype(), self.cfg.chunk_size, self.heads
        if self.num_pages > 1:
            weights = tuple(repeat(w.to(device=device, dtype=dt), "h o i -> b h P o i", b=batch, P=self.num_pages)
                            for w in self.w0)
            paging = tuple(torch.zeros(batch, h, dtype=torch.long, device=device) for _ in range(2))
        else:
            weights = tuple(repeat(w.to(device=device, dtype=dt), "h o i -> b h o i", b=batch) for w in self.w0)
            paging = (None, None)
        momentum = tuple(torch.zeros_like(w) for w in weights)
        return TitansState(
            weights, momentum,
            torch.zeros(batch, h, c, self.head_dim, device=device, dtype=dt),
            torch.zeros(batch, h, c, self.head_dim, device=device, dtype=dt),
            torch.zeros(batch, h, c, 3, device=device, dtype=dt),
            torch.zeros(batch, c, device=device, dtype=dt),
            0, *paging,
        )

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the state for `batch` sequences: fixed, whatever the number of tokens seen."""
        per = 2 * sum(w.numel() for w in self.w0) * self.num_pages
        per += self.heads * self.cfg.chunk_size * (2 * self.head_dim + 3) + self.cfg.chunk_size
        paging = 2 * self.heads * 8 if self.num_pages > 1 else 0  # active page and switch count, int64
        return batch * (per * (8 if self._mem_dtype() == torch.float64 else 4) + paging)

    # -- research extensions (module docstring) --
    def chunk_complexity(self, k: Tensor, mask: Tensor) -> Tensor:
        """Complexity of one chunk per memory: k [(b h), c, dk] unit keys, mask [(b h), c] -> [(b h)] in [0, 1)."""
        proj = repeat(self.twist.to(k.dtype), "two h p k -> two (b h) p k", b=k.shape[0] // self.heads)
        return chunk_complexity(k, mask, proj[0], proj[1], self.cfg.complexity_blend)

    def _per_memory(self, t: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
        """A per-head parameter [h, ...] -> [(b h), ...] in the memory dtype."""
        return repeat(t.to(dtype), "h ... -> (b h) ...", b=batch)

    def _read(self, weights: tuple[Tensor, ...], q: Tensor) -> Tensor:
        """M_W(q) for q [(b h), c, k]; with paging (weights [(b h), P, o, i]) pooled over pages with π."""
        if self.num_pages == 1:
            y = mlp_apply(weights, q)
        else:
            P = self.num_pages
            y = mlp_apply(tuple(w.flatten(0, 1) for w in weights), repeat(q, "B c k -> (B P) c k", P=P))
            pool = self._per_memory(self.page_pool.softmax(dim=-1), q.shape[0] // self.heads, q.dtype)
            y = einsum(rearrange(y, "(B P) c d -> B P c d", P=P), pool, "B P c d, B P -> B c d")
        return F.rms_norm(y, y.shape[-1:], eps=1e-6) if self.cfg.read_norm else y

    @staticmethod
    def _paged_step(weights, momentum, page: Tensor, *step_args):
        """memory_step on the active page [(b h)] of paged weights [(b h), P, o, i]; other pages unchanged."""
        rows = torch.arange(page.shape[0], device=page.device)
        on = F.one_hot(page, weights[0].shape[1]).bool()[:, :, None, None]
        new_w, new_s = memory_step(tuple(w[rows, page] for w in weights), tuple(s[rows, page] for s in momentum),
                                   *step_args)
        put = lambda old, new: torch.where(on, new[:, None], old)  # noqa: E731
        return tuple(map(put, weights, new_w)), tuple(map(put, momentum, new_s))

    # -- projections (shared with the reference implementation in the tests) --
    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [b, s, dim] -> q, k (unit norm), v [b, h, s, dh] and gate logits [b, h, s, 3], memory dtype."""
        xn = self.norm(x)
        q, k, v = rearrange(self.to_qkv(xn), "b s (three h d) -> three b h s d", three=3, h=self.heads)
        gates = rearrange(self.to_gates(xn), "b s (h g) -> b h s g", h=self.heads)
        dt = self._mem_dtype()
        return F.normalize(q.to(dt), dim=-1), F.normalize(k.to(dt), dim=-1), v.to(dt), gates.to(dt)

    def forward(self, x: Tensor, state: TitansState | None = None,
                write_mask: Tensor | None = None) -> tuple[Tensor, TitansState]:
        b, s, _ = x.shape
        cfg, c = self.cfg, self.cfg.chunk_size
        if state is None:
            state = self.init_state(b, x.device)
        q, k, v, gates = self.project(x)
        mask = write_mask.to(k.dtype) if write_mask is not None else k.new_ones(b, s)
        p = state.pending
        # the stream since the last complete chunk: pending tokens, then this call's tokens
        k = torch.cat([state.pending_k[:, :, :p], k], dim=2)
        v = torch.cat([state.pending_v[:, :, :p], v], dim=2)
        gates = torch.cat([state.pending_gates[:, :, :p], gates], dim=2)
        mask = torch.cat([state.pending_mask[:, :p], mask], dim=1)
        flat = lambda t: rearrange(t, "b h ... -> (b h) ...")  # noqa: E731
        k, v, gates, q = flat(k), flat(v), flat(gates), flat(q)
        mask = repeat(mask, "b s -> (b h) s", h=self.heads)
        weights, momentum = tuple(map(flat, state.weights)), tuple(map(flat, state.momentum))
        paged = self.num_pages > 1
        if paged:
            page, switches = flat(state.active_page), flat(state.page_switches)
        if cfg.use_symplectic_gating:
            scale = self._per_memory(self.complexity_scale.sigmoid(), b, k.dtype)

        outs, n = [], p + s
        for start in range(0, n, c):
            end = min(start + c, n)
            lo = max(start, p)  # this call's tokens inside the chunk read the weights before the chunk
            if end > lo:
                outs.append(self._read(weights, q[:, lo - p:end - p]))
            if end - start == c:
                lr, eta, alpha = chunk_gates(gates[:, start:end], cfg.max_lr)
                step = (k[:, start:end], v[:, start:end], mask[:, start:end])
                if not self.uses_complexity:  # the baseline, exactly
                    weights, momentum = memory_step(weights, momentum, *step, lr, eta, alpha, cfg.max_grad_rms,
                                                    cfg.normalize_step)
                    continue
                cplx = self.chunk_complexity(k[:, start:end], mask[:, start:end])
                if cfg.use_symplectic_gating:
                    alpha = gated_forget(alpha, cplx, scale)
                if paged:
                    switch = cplx > cfg.page_threshold  # objective reduction: this chunk opens the next page
                    page = torch.where(switch, (page + 1) % self.num_pages, page)
                    switches = switches + switch.long()
                    weights, momentum = self._paged_step(weights, momentum, page, *step, lr, eta, alpha,
                                                         cfg.max_grad_rms, cfg.normalize_step)
                else:
                    weights, momentum = memory_step(weights, momentum, *step, lr, eta, alpha, cfg.max_grad_rms,
                                                    cfg.normalize_step)
        rest = n % c
        out = torch.cat(outs, dim=1) if outs else q.new_zeros(b * self.heads, 0, self.head_dim)

        unflat = lambda t: rearrange(t, "(b h) ... -> b h ...", b=b)  # noqa: E731
        pad = lambda t: F.pad(t[:, n - rest:n], (0, 0, 0, c - rest))  # noqa: E731
        new_state = TitansState(
            tuple(map(unflat, weights)), tuple(map(unflat, momentum)),
            unflat(pad(k)), unflat(pad(v)), unflat(pad(gates)),
            unflat(F.pad(mask[:, n - rest:n], (0, c - rest)))[:, 0], rest,
            *((unflat(page), unflat(switches)) if paged else ()),
        )
        out = rearrange(out, "(b h) s d -> b s (h d)", b=b).to(self.to_out.weight.dtype)
        return self.to_out(out).to(x.dtype), new_state

    def read(self, x: Tensor, state: TitansState | None) -> Tensor:
        """Read only: every token queries the current weights; nothing is written, nothing decays."""
        b = x.shape[0]
        if state is None:
            state = self.init_state(b, x.device)
        q = rearrange(self.project(x)[0], "b h ... -> (b h) ...")
        out = self._read(tuple(rearrange(w, "b h ... -> (b h) ...") for w in state.weights), q)
        out = rearrange(out, "(b h) s d -> b s (h d)", b=b).to(self.to_out.weight.dtype)
        return self.to_out(out).to(x.dtype)

    def write(self, x: Tensor, state: TitansState | None) -> TitansState:
        """Write only (e.g. the tokens the cache just evicted, in stream order); returns the new state."""
        return self(x, state)[1]
