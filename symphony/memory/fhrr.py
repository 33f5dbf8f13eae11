"""FHRR holographic memory: key/value pairs superposed into a fixed-size complex state.

A key becomes a vector of unit-modulus phasors p(k) = exp(i·theta(k)) with theta = sigma · R k̂
(random Fourier features of the L2-normalised key; R [head_dim, holo_dim] starts Gaussian and is
learned). A pair is bound by the outer product of the phasor with the value and superposed:

    S_t = gamma_t · S_{t-1} + beta_t · p(k_t) ⊗ v_t          S: [holo_dim, head_dim] complex, per (batch, head)
    y_t = Re(conj(p(q_t)) · S_t) / holo_dim                   (unbind with the conjugate phasor)

Column j of S is a classic FHRR trace binding the scalar v_j to the key's phasor, so the state is
`head_dim` FHRR banks that share one key. conj(p(q))·p(k)/H averages cos(theta_q - theta_k): exactly
1 for q = k and ~N(0, 1/(2H)) for an unrelated key, so retrieval is linear attention with a Gaussian
kernel exp(-sigma² (1 - cos(q, k))) and crosstalk that grows like sqrt(N / 2H).

Measured capacity (tests/test_memory_fhrr.py; holo_dim 1024, head_dim 64, random keys and values, query
= a stored key; top-1 = the recalled vector is closest, by cosine, to its own value among all N stored):

    pairs N      64     512    1024   2048   3072   4096   6144   8192   16384
    top-1       1.00   1.00   1.00   1.00   0.99   0.92   0.72   0.52   0.09
    cosine      0.98   0.89   0.82   0.70   0.63   0.57   0.50   0.45   0.33

i.e. about 4·holo_dim pairs at >= 90% top-1; the cosine follows 1/sqrt(1 + N/(2·holo_dim)).
A stream writes far more pairs than that, so the memory needs forgetting and selective writing: the
per-head decay gamma (default 1 - 1e-4, half-life ~6.9k tokens, learned on a log-half-life scale)
keeps ~1/(1-gamma²) ≈ 5k pairs' worth of crosstalk, and the learned per-token write gate beta (times
the caller's `write_mask`) chooses what is stored. The original Symphony had a single 769-value vector
with gamma = 0.99 (a 69-token half-life); see shared/research/symphony_original.md §1.2.

Computation over a segment is chunked: inside a chunk of C tokens a causal [C×C] score matrix, across
chunks the state is carried, so cost is O(S·C + S·H·d) and no S×S tensor exists. Chunking is exact:
any split of a stream into calls gives the same outputs as one call (tests check this against a
token-by-token reference). The memory math runs in float32 / complex64 whatever the model dtype.

einops legend: b batch, h heads, s tokens, c tokens of a chunk (i, j: query, key token), m holographic
dim (phasors), f = 2m real features (cos | sin), d value dim, k key dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

__all__ = [
    "FHRRConfig", "FHRRMemory", "phasor", "bind", "unbind", "key_phases",
    "fhrr_write", "fhrr_read", "fhrr_scan", "fhrr_reference",
]


@dataclass
class FHRRConfig:
    dim: int = 576  # model hidden size (input and output of the module)
    heads: int = 9
    head_dim: int = 0  # key/value dim per head; 0 -> dim // heads
    holo_dim: int = 1024  # phasors per key (H); capacity ~4·H pairs at >= 90% top-1
    chunk_size: int = 64  # tokens per chunk of the parallel scan (a [C×C] matrix at most)
    decay: float = 1 - 1e-4  # per-token state decay gamma (initial value); 1.0 = never forget
    learn_decay: bool = True  # learn gamma per head (on a log half-life scale); needs decay < 1
    key_scale: float = 3.0  # sigma: kernel exp(-sigma²(1 - cos)); >~2 makes unrelated keys' phases ~uniform
    learn_phases: bool = True  # learn the phase projection R (and sigma); else a fixed random projection
    write_gate: bool = True  # learned per-token, per-head write strength beta in (0, 1)
    out_norm: bool = True  # per-head RMSNorm of the read-out: its scale then does not depend on how full S is


# ---- functional core -------------------------------------------------------------------------------

def phasor(theta: Tensor) -> Tensor:
    """exp(i·theta): unit-modulus complex phasors."""
    return torch.polar(torch.ones_like(theta), theta)


def bind(a: Tensor, x: Tensor) -> Tensor:
    """Element-wise complex product: commutative, associative, invertible for unit phasors."""
    return a * x


def unbind(a: Tensor, x: Tensor) -> Tensor:
    """Inverse of bind(a, ·) for unit-modulus a: conj(a) = 1/a."""
    return a.conj() * x


def key_phases(k: Tensor, proj: Tensor, scale: Tensor | float) -> Tensor:
    """theta = scale · R k̂ for keys k [b h s k], proj R [h k m], scale [h] or float -> [b h s m]."""
    if isinstance(scale, Tensor):
        scale = rearrange(scale, "h -> h 1 1")
    return einsum(F.normalize(k, dim=-1), proj * scale, "b h s k, h k m -> b h s m")  # scale the small factor


def _per_state(x: Tensor | float) -> Tensor | float:
    return x[..., None, None] if isinstance(x, Tensor) else x  # [...] -> [..., 1, 1] against [..., m, d]


def fhrr_write(state: Tensor, pk: Tensor, v: Tensor, beta: Tensor | float = 1.0,
               decay: Tensor | float = 1.0) -> Tensor:
    """One write: decay·state + beta·(pk ⊗ v). state [..., m, d] complex, pk [..., m], v [..., d]."""
    bound = pk[..., :, None] * v[..., None, :].to(pk.dtype)
    return _per_state(decay) * state + _per_state(beta) * bound


def fhrr_read(state: Tensor, pq: Tensor) -> Tensor:
    """Unbind with conj(pq) and sum over the phasor dim: Re(conj(pq) · state) / m -> [..., d] real."""
    return einsum(pq.conj(), state, "... m, ... m d -> ... d").real / pq.shape[-1]


def fhrr_reference(theta_q: Tensor, theta_k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor,
                   state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Token-by-token loop of fhrr_write then fhrr_read (read includes the token's own write). Slow; tests."""
    b, h, s, m = theta_q.shape
    if state is None:
        dt = torch.complex128 if v.dtype == torch.float64 else torch.complex64
        state = theta_q.new_zeros(b, h, m, v.shape[-1], dtype=dt)
    outs = []
    for t in range(s):
        state = fhrr_write(state, phasor(theta_k[:, :, t]), v[:, :, t], beta[:, :, t], log_decay[:, :, t].exp())
        outs.append(fhrr_read(state, phasor(theta_q[:, :, t])))
    return torch.stack(outs, dim=2), state


def fhrr_scan(theta_q: Tensor, theta_k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor,
              state: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunked parallel form of `fhrr_reference`.

    theta_q, theta_k [b h s m] phases; v [b h s d]; beta [b h s] write strengths; log_decay [b h s] (<= 0,
    log gamma_t); state [b h m d] complex or None. Returns (out [b h s d], new state [b h m d] complex).
    Re(conj(p_q) p_k) = cos·cos + sin·sin, so the scan runs on real features f = [cos | sin] (half the
    work of complex matmuls, any backend) with the state as [Re S; Im S] stacked on the feature axis.
    """
    b, h, s, m = theta_q.shape
    d = v.shape[-1]
    real = torch.float64 if v.dtype == torch.float64 else torch.float32
    v, beta, log_decay = v.to(real), beta.to(real), log_decay.to(real)
    if state is None:
        S = v.new_zeros(b, h, 2 * m, d)
    else:
        S = torch.cat([state.real, state.imag], dim=-2).to(real)
    outs = []
    for i in range(0, s, chunk_size):
        tq, tk = theta_q[:, :, i:i + chunk_size].to(real), theta_k[:, :, i:i + chunk_size].to(real)
        fq = torch.cat([tq.cos(), tq.sin()], dim=-1)
        fk = torch.cat([tk.cos(), tk.sin()], dim=-1)
        vc, bc = v[:, :, i:i + chunk_size], beta[:, :, i:i + chunk_size]
        A = log_decay[:, :, i:i + chunk_size].cumsum(-1)  # log of the decay from chunk start to token t
        c = A.shape[-1]
        # decay from token j's write to token i's read, exp(A_i - A_j) for j <= i; masked before exp (no overflow)
        causal = torch.ones(c, c, dtype=torch.bool, device=A.device).tril()
        gap = (A[..., :, None] - A[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        scores = einsum(fq, fk, "b h i f, b h j f -> b h i j") / m * gap * bc[..., None, :]
        intra = einsum(scores, vc, "b h i j, b h j d -> b h i d")
        inter = einsum(fq, S, "b h i f, b h f d -> b h i d") / m * A.exp()[..., None]
        outs.append(intra + inter)
        # carry the state to the end of the chunk
        w = (A[..., -1:] - A).exp() * bc
        S = A[..., -1].exp()[..., None, None] * S + einsum(fk, vc * w[..., None], "b h c f, b h c d -> b h f d")
    out = torch.cat(outs, dim=2) if outs else v.new_zeros(b, h, 0, d)
    return out, torch.complex(S[..., :m, :], S[..., m:, :])


# ---- module ----------------------------------------------------------------------------------------

class FHRRMemory(nn.Module):
    """x [B, S, dim] -> (out [B, S, dim], state [B, heads, holo_dim, head_dim] complex64).

    Keys, values, queries and write gates are projections of RMS-normalised x; the read-out of each
    head is RMS-normalised (optional) and projected back to dim. Callers add it through their own gate.
    `write_mask` [B, S] (1 = store, 0 = read only) lets the caller store only, e.g., evicted tokens.
    """

    calibrated_parameters = ("to_beta", "decay_w")  # phase 6: the write gate and the decay

    def __init__(self, cfg: FHRRConfig):
        super().__init__()
        self.cfg = cfg
        h, dh, m = cfg.heads, cfg.head_dim or cfg.dim // cfg.heads, cfg.holo_dim
        if h < 1 or dh < 1 or m < 1 or cfg.chunk_size < 1:
            raise ValueError(f"FHRRConfig needs positive heads/head_dim/holo_dim/chunk_size; got {cfg}")
        if not 0.0 < cfg.decay <= 1.0:
            raise ValueError(f"FHRRConfig.decay must be in (0, 1]; got {cfg.decay}")
        if cfg.learn_decay and cfg.decay >= 1.0:
            raise ValueError("FHRRConfig.learn_decay needs decay < 1 (decay = 1.0 is a fixed, non-forgetting memory)")
        self.heads, self.head_dim, self.holo_dim = h, dh, m
        self.norm = nn.RMSNorm(cfg.dim)
        self.to_qkv = nn.Linear(cfg.dim, 3 * h * dh, bias=False)
        self.to_beta = nn.Linear(cfg.dim, h) if cfg.write_gate else None
        if self.to_beta is not None:
            nn.init.zeros_(self.to_beta.weight)  # beta = sigmoid(0) = 1/2 for every token at init
            nn.init.zeros_(self.to_beta.bias)
        self.proj = nn.Parameter(torch.randn(h, dh, m), requires_grad=cfg.learn_phases)
        self.log_scale = nn.Parameter(torch.full((h,), math.log(cfg.key_scale)), requires_grad=cfg.learn_phases)
        # gamma = exp(-exp(w)): w is log(1/half-life) up to ln 2, a scale on which learning is well conditioned
        neg_log = -math.log(cfg.decay)
        w0 = math.log(neg_log) if neg_log > 0 else float("-inf")
        self.decay_w = nn.Parameter(torch.full((h,), w0), requires_grad=cfg.learn_decay)
        self.out_norm = nn.RMSNorm(dh) if cfg.out_norm else None
        self.to_out = nn.Linear(h * dh, cfg.dim, bias=False)

    def _mem_dtype(self) -> torch.dtype:
        return torch.float64 if self.to_qkv.weight.dtype == torch.float64 else torch.float32

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        device = device if device is not None else self.to_qkv.weight.device
        dt = torch.complex128 if self._mem_dtype() == torch.float64 else torch.complex64
        return torch.zeros(batch, self.heads, self.holo_dim, self.head_dim, dtype=dt, device=device)

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the state for `batch` sequences: fixed, whatever the number of tokens seen."""
        per = 16 if self._mem_dtype() == torch.float64 else 8
        return batch * self.heads * self.holo_dim * self.head_dim * per

    def log_decay(self) -> Tensor:
        """log gamma per head [h] (0 when decay = 1)."""
        return -self.decay_w.to(self._mem_dtype()).exp()

    def features(self, x: Tensor, write_mask: Tensor | None = None):
        """x [b, s, dim] -> theta_q, theta_k [b h s m], v [b h s d], beta, log_decay [b h s]: fhrr_scan's inputs."""
        b, s, _ = x.shape
        dt = self._mem_dtype()
        xn = self.norm(x)
        q, k, v = rearrange(self.to_qkv(xn), "b s (three h d) -> three b h s d", three=3, h=self.heads)
        scale, proj = self.log_scale.to(dt).exp(), self.proj.to(dt)
        theta_q, theta_k = key_phases(q.to(dt), proj, scale), key_phases(k.to(dt), proj, scale)
        if self.to_beta is not None:
            beta = rearrange(self.to_beta(xn).to(dt).sigmoid(), "b s h -> b h s")
        else:
            beta = x.new_ones(b, self.heads, s, dtype=dt)
        if write_mask is not None:
            beta = beta * rearrange(write_mask.to(beta), "b s -> b 1 s")
        log_decay = rearrange(self.log_decay(), "h -> 1 h 1").expand(b, -1, s)
        return theta_q, theta_k, v.to(dt), beta, log_decay

    def readout(self, out: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-head read-out [b h s d] -> [b s dim]."""
        if self.out_norm is not None:
            out = self.out_norm(out.to(self.out_norm.weight.dtype))
        out = rearrange(out, "b h s d -> b s (h d)").to(self.to_out.weight.dtype)
        return self.to_out(out).to(dtype)

    def forward(self, x: Tensor, state: Tensor | None = None,
                write_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        out, state = fhrr_scan(*self.features(x, write_mask), state, self.cfg.chunk_size)
        return self.readout(out, x.dtype), state

    def read(self, x: Tensor, state: Tensor | None) -> Tensor:
        """Read only: every token unbinds the given state; nothing is written, nothing decays."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        theta_q = self.features(x)[0]
        S = torch.cat([state.real, state.imag], dim=-2).to(theta_q.dtype)  # [b h 2m d]
        fq = torch.cat([theta_q.cos(), theta_q.sin()], dim=-1)
        out = einsum(fq, S, "b h s f, b h f d -> b h s d") / self.holo_dim
        return self.readout(out, x.dtype)

    def write(self, x: Tensor, state: Tensor | None) -> Tensor:
        """Write only (e.g. the tokens the cache just evicted, in stream order); returns the new state."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        _, state = fhrr_scan(*self.features(x), state, self.cfg.chunk_size)
        return state
