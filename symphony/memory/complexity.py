"""Per-chunk "complexity" signals for the Titans memory's research extensions (symplectic gating and
manifold paging, `TitansConfig.use_symplectic_gating` / `num_pages`; both off by default).

Source: the "Symplectic Gating and Manifold Paging (Objective Reduction)" seed
(`shared/seeds/000_5e4d1d90e9a805eb.txt`, the displague/titans-pytorch fork). What is implemented here,
for one memory (sequence, head) and one chunk of C tokens with unit keys k_1..k_C and write weights m_i:

Wedge (twist) signal. Two fixed-at-init or learned projections A, B [p, head_dim] map each key to two
unit vectors a_t = A k_t / ‖A k_t‖, b_t = B k_t / ‖B k_t‖. Coordinate j of (a_t, b_t) is a point
z_j(t) = (a_tj, b_tj) of the j-th canonical plane of the symplectic form ω = Σ_j da_j ∧ db_j; the signed
area spanned by consecutive points in that plane is the 2-D wedge product

    μ_tj = a_tj · b_(t-1)j − a_(t-1)j · b_tj        (= −z_j(t−1) ∧ z_j(t))

and the token's complexity is tanh(‖μ_t‖) ∈ [0, tanh 2) (‖μ_t‖ <= 2 for unit a, b). Consecutive equal
keys (a "flat", rational flow) give 0. The chunk's wedge complexity is the MAX over its C − 1
consecutive pairs (t−1, t) with m_(t−1) > 0 and m_t > 0 (the seed: "per-chunk max of a tanh(wedge)
complexity"; a max keeps one twist from being washed out by averaging).

DMD signal (optional second signal, the seed's `combine_symplectic_and_dmd`). Exact DMD of the chunk's
key trajectory with rank r: X = [k_1 .. k_(C−1)], Y = [k_2 .. k_C], POD modes from the top-r right
singular vectors V_r of X, Ŷ = U_r Ã U_rᵀ X = U_r U_rᵀ Y V_r V_rᵀ (Ã = U_rᵀ Y V_r Σ_r⁻¹, the seed's
formula). The signal is the relative residual ‖Y − Ŷ‖²_F / ‖Y‖²_F ∈ [0, 1] (Y ↦ U_r U_rᵀ Y V_r V_rᵀ is
an orthogonal projection): 0 when a rank-r linear system explains the chunk, ~1 for unstructured keys.
It is zeroed for a chunk without any written token. It carries no gradient (eigh's backward is unstable
for near-degenerate spectra). Blend: c = (1 − β) c_wedge + β c_dmd, β = `complexity_blend`.

Gating: α_eff = α · (1 − s · c) with s = sigmoid(learned logit) ∈ (0, 1) per head (0.5 at init, the seed's
initial scale): high complexity => less forgetting; α_eff ∈ [α(1 − s), α], monotone non-increasing in c.

Where this departs from the seed (deliberately):
- The states are the memory's own unit keys per head (the seed projects the normed input x, shared by all
  heads), so the signal, the gating and the paging are per (sequence, head).
- The pair that crosses a chunk boundary is not used, so a chunk's complexity depends on its own tokens
  only; this keeps the streaming exactness of TitansMemory (any split of a stream into calls gives the
  same result). The seed pads the first token of each call with 0 instead, which depends on call splits.
- DMD runs per chunk with a small rank and returns a relative residual (scale-free, in [0, 1]); the seed
  runs a full-rank DMD over the whole call window and squashes the absolute MSE with tanh. With r >= C−1
  and head_dim >= C−1 a per-chunk full-rank fit is exact (residual of Y's projection only), hence the rank.
- The seed's gated-SAE / top-k / phase / quorum / codebook / hierarchical options are not implemented.
- The write mask: pairs (wedge) and chunks (DMD) without written tokens contribute 0 (the seed has none).
"""
from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

__all__ = ["twist_planes", "wedge_complexity", "dmd_residual", "chunk_complexity", "gated_forget", "DMD_RANK"]

DMD_RANK = 4  # rank of the per-chunk DMD fit (the second complexity signal)


def twist_planes(k: Tensor, proj_a: Tensor, proj_b: Tensor) -> tuple[Tensor, Tensor]:
    """k [B, c, dk], proj_a/proj_b [B, p, dk] -> unit a, b [B, c, p]."""
    a = einsum(k, proj_a, "B c k, B p k -> B c p")
    b = einsum(k, proj_b, "B c k, B p k -> B c p")
    return torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)


def wedge_complexity(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """max_t tanh(‖a_t ⊙ b_(t−1) − a_(t−1) ⊙ b_t‖) over pairs with both tokens written; a, b [B, c, p],
    mask [B, c] -> [B] (0 for a chunk of one token or without a written pair)."""
    if a.shape[1] < 2:
        return a.new_zeros(a.shape[0])
    mu = a[:, 1:] * b[:, :-1] - a[:, :-1] * b[:, 1:]  # [B, c-1, p] signed areas, one per canonical plane
    pair = ((mask[:, 1:] > 0) & (mask[:, :-1] > 0)).to(a.dtype)
    return (torch.tanh(torch.linalg.vector_norm(mu, dim=-1)) * pair).amax(dim=1)


@torch.no_grad()
def dmd_residual(x: Tensor, mask: Tensor, rank: int = DMD_RANK) -> Tensor:
    """Relative residual of a rank-r exact-DMD fit of the trajectory x [B, c, d] (time along c) -> [B] in [0, 1].
    Zero for a chunk of one token or without a written token (mask [B, c])."""
    bsz, c, _ = x.shape
    if c < 2:
        return x.new_zeros(bsz)
    X, Y = x[:, :-1].transpose(1, 2), x[:, 1:].transpose(1, 2)  # [B, d, T] snapshots as columns
    evals, evecs = torch.linalg.eigh(X.transpose(1, 2) @ X)  # right singular vectors of X, ascending
    r = min(rank, X.shape[-1])
    lam, v = evals[:, -r:], evecs[:, :, -r:]  # [B, r], [B, T, r]
    keep = lam > 1e-10 * lam[:, -1:].clamp(min=1e-30)  # drop directions X does not span
    u = (X @ v) / lam.clamp(min=1e-30).sqrt()[:, None, :] * keep[:, None, :]  # POD modes U_r [B, d, r]
    v = v * keep[:, None, :]
    y_hat = u @ (u.transpose(1, 2) @ Y @ v) @ v.transpose(1, 2)  # U_r U_rᵀ Y V_r V_rᵀ
    res = (Y - y_hat).pow(2).sum((1, 2)) / Y.pow(2).sum((1, 2)).clamp(min=1e-30)
    return res.clamp(0.0, 1.0) * (mask > 0).any(dim=1).to(x.dtype)


def chunk_complexity(k: Tensor, mask: Tensor, proj_a: Tensor, proj_b: Tensor, blend: float = 0.0) -> Tensor:
    """One chunk's complexity c ∈ [0, 1) per memory: k [B, c, dk] unit keys, mask [B, c] -> [B]."""
    a, b = twist_planes(k, proj_a, proj_b)
    out = wedge_complexity(a, b, mask)
    if blend > 0:
        out = (1 - blend) * out + blend * dmd_residual(k, mask)
    return out


def gated_forget(alpha: Tensor, complexity: Tensor, scale: Tensor) -> Tensor:
    """α_eff = α · (1 − s · c), s ∈ (0, 1) (a sigmoid), c ∈ [0, 1) -> α_eff ∈ (0, α]: less forgetting when complex."""
    return alpha * (1 - scale * complexity)
