"""Titans neural memory: the chunked module == a plain loop over the paper's equations with autograd
gradients at the current weights; recurrence (not all gradients at W_0); state carried across calls;
causality; constant state size and no NaN over a long stream; gradients reach every parameter."""
from __future__ import annotations

import pytest
import torch

from helpers import gen
from symphony.memory import TitansConfig, TitansMemory, detach_state, state_nbytes
from symphony.memory.titans import gram_bound, memory_step, mlp_apply, mlp_grads


def small_memory(**kw) -> TitansMemory:
    torch.manual_seed(0)
    cfg = dict(dim=24, heads=2, hidden=20, chunk_size=8, lr_init=0.3, momentum_init=0.8, forget_init=0.05)
    cfg.update(kw)
    mem = TitansMemory(TitansConfig(**cfg)).double()
    with torch.no_grad():  # data-dependent gates, so the reference must follow per-chunk gate values
        mem.to_gates.weight.normal_(0, 0.3)
    return mem


def spectral_bound(k: torch.Tensor, m: torch.Tensor) -> float:
    """‖(G/tr G)^8‖_F^(1/8)·tr G for G = M^½ K Kᵀ M^½ (written independently of titans.gram_bound)."""
    gram = torch.diag(m.sqrt()) @ k @ k.T @ torch.diag(m.sqrt())
    tr = torch.trace(gram).item()
    return torch.linalg.matrix_power(gram / tr, 8).norm().item() ** (1 / 8) * tr


def reference(mem: TitansMemory, x: torch.Tensor, mask: torch.Tensor | None = None, grad_at: str = "current"):
    """The paper's equations, one chunk at a time, per sequence and head, with torch.autograd.grad.

    For chunk n:  g = clip(∇_W Σ_i m_i ‖M_W(k_i) − v_i‖² / ρ) at W = W_{n-1} (W_0 if grad_at="initial"),
                  S_n = η S_{n-1} − θ g,   W_n = (1 − α) W_{n-1} + S_n,   y_i = M_{W_{n-1}}(q_i).
    """
    cfg, c = mem.cfg, mem.cfg.chunk_size
    q, k, v, gates = (t.detach() for t in mem.project(x))
    b, h, s, _ = q.shape
    mask = torch.ones(b, s, dtype=q.dtype) if mask is None else mask.to(q.dtype)
    out = torch.zeros_like(v)
    finals = {}
    for bi in range(b):
        for hi in range(h):
            W = [w[hi].detach().clone() for w in mem.w0]
            W0 = [w.clone() for w in W]
            S = [torch.zeros_like(w) for w in W]
            for start in range(0, s, c):
                sl = slice(start, start + c)

                def M(ws, inp):  # depth 2: W2 silu(W1 k) / sqrt(f)
                    if len(ws) == 1:
                        return ws[0] @ inp
                    return ws[1] @ torch.nn.functional.silu(ws[0] @ inp) / ws[0].shape[0] ** 0.5

                for t in range(start, min(start + c, s)):
                    out[bi, hi, t] = M(W, q[bi, hi, t])
                if min(start + c, s) - start < c:
                    break  # an incomplete chunk is not stored yet
                at = [w.clone().requires_grad_(True) for w in (W if grad_at == "current" else W0)]
                loss = sum(mask[bi, t] * (M(at, k[bi, hi, t]) - v[bi, hi, t]).pow(2).sum()
                           for t in range(start, start + c))
                if cfg.normalize_step:
                    loss = loss / max(1.0, spectral_bound(k[bi, hi, sl], mask[bi, sl]))
                grads = torch.autograd.grad(loss, at)
                rms = torch.sqrt(sum(g.pow(2).sum() for g in grads) / sum(g.numel() for g in grads))
                grads = [g * min(1.0, cfg.max_grad_rms / rms.item()) for g in grads]
                gate = gates[bi, hi, sl].mean(0).sigmoid()
                lr, eta, alpha = gate[0] * cfg.max_lr, gate[1], gate[2]
                S = [eta * s_ - lr * g for s_, g in zip(S, grads)]
                W = [(1 - alpha) * w + s_ for w, s_ in zip(W, S)]
            finals[bi, hi] = W
    y = torch.einsum("bhsd->bshd", out).reshape(b, s, h * mem.head_dim)
    return mem.to_out(y).detach(), finals


@pytest.mark.parametrize("depth,normalize", [(1, True), (2, True), (2, False)])
def test_chunked_equals_sequential_reference(depth, normalize):
    # clip at 0.3: active in some chunks and not in others (surprise RMS here is 0.1-0.5)
    mem = small_memory(depth=depth, max_grad_rms=0.3, normalize_step=normalize)
    x = torch.randn(2, 45, 24, generator=gen(1), dtype=torch.float64)
    mask = (torch.rand(2, 45, generator=gen(2)) > 0.2).double()
    want, finals = reference(mem, x, mask)
    with torch.no_grad():
        got, state = mem(x, write_mask=mask)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    for (bi, hi), W in finals.items():
        for w_ref, w in zip(W, state.weights):
            assert torch.allclose(w[bi, hi], w_ref, atol=1e-10, rtol=0)
    # float32 (the default memory precision) agrees with the float64 reference to float32 tolerance
    mem32 = small_memory(depth=depth, max_grad_rms=0.3, normalize_step=normalize).float()
    with torch.no_grad():
        got32, _ = mem32(x.float(), write_mask=mask.float())
    assert torch.allclose(got32.double(), want, atol=1e-4)


def test_recurrent_not_all_gradients_at_w0():
    mem = small_memory()
    x = torch.randn(1, 32, 24, generator=gen(3), dtype=torch.float64)
    with torch.no_grad():
        got, state = mem(x)
    at_current, _ = reference(mem, x, grad_at="current")
    at_w0, _ = reference(mem, x, grad_at="initial")
    assert torch.allclose(got, at_current, atol=1e-10)
    assert (got - at_w0).abs().max() > 1e-3  # chunks 3 and 4 read different weights if grads were at W_0
    # directly: chunk 2's surprise at W_1 (after chunk 1) is not its surprise at W_0
    q, k, v, _ = (t.detach() for t in mem.project(x))
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    c = mem.cfg.chunk_size
    with torch.no_grad():
        _, st1 = mem(x[:, :c])
    w0 = tuple(flat(w.detach().expand(1, *w.shape)) for w in mem.w0)
    w1 = tuple(map(flat, st1.weights))
    k2, v2, m2 = flat(k[:, :, c:2 * c]), flat(v[:, :, c:2 * c]), torch.ones(mem.heads, c, dtype=torch.float64)
    g_w1, g_w0 = mlp_grads(w1, k2, v2, m2), mlp_grads(w0, k2, v2, m2)
    rel = sum((a - b).norm() for a, b in zip(g_w1, g_w0)) / sum(b.norm() for b in g_w0)
    assert rel > 1e-2


def test_memory_step_descends():
    """One surprise step without momentum lowers the loss on the chunk it stored (the memory learns)."""
    mem = small_memory(max_grad_rms=100.0)
    _, k, v, _ = (t.detach() for t in mem.project(torch.randn(1, 8, 24, generator=gen(4), dtype=torch.float64)))
    k, v = k[0], v[0]  # [h, c, d]: one memory per head
    w = tuple(p.detach() for p in mem.w0)
    mask = torch.ones(2, 8, dtype=torch.float64)
    loss = lambda ws: (mlp_apply(ws, k) - v).pow(2).sum()  # noqa: E731
    zero, lr = tuple(torch.zeros_like(t) for t in w), torch.full((2,), 0.5, dtype=torch.float64)
    w_new, _ = memory_step(w, zero, k, v, mask, lr, torch.zeros(2, dtype=torch.float64),
                           torch.zeros(2, dtype=torch.float64), mem.cfg.max_grad_rms)
    assert loss(w_new) < 0.7 * loss(w)


def test_state_carries_across_calls():
    mem = small_memory()
    x = torch.randn(2, 53, 24, generator=gen(5), dtype=torch.float64)
    mask = (torch.rand(2, 53, generator=gen(6)) > 0.3).double()
    with torch.no_grad():
        full, full_state = mem(x, write_mask=mask)
        outs, state, start = [], None, 0
        for n in (16, 3, 1, 20, 13):  # ends mid-chunk, single tokens, chunk-aligned
            out, state = mem(x[:, start:start + n], state, write_mask=mask[:, start:start + n])
            outs.append(out)
            start += n
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-10)
    assert state.pending == full_state.pending == 53 % 8
    for a, b in zip(state, full_state):
        if isinstance(a, tuple):
            assert all(torch.allclose(x_, y_, atol=1e-10) for x_, y_ in zip(a, b))
        elif isinstance(a, torch.Tensor):
            assert torch.allclose(a, b, atol=1e-10)


def test_causal():
    mem = small_memory()
    x = torch.randn(1, 40, 24, generator=gen(7), dtype=torch.float64)
    with torch.no_grad():
        out, _ = mem(x)
        for t in (0, 9, 23, 31):
            y = x.clone()
            y[:, t + 1:] = torch.randn(1, 40 - t - 1, 24, generator=gen(t), dtype=torch.float64)
            out2, _ = mem(y)
            assert torch.equal(out2[:, :t + 1], out[:, :t + 1])


def test_state_bytes_constant_and_finite_over_100k_tokens():
    """Default gates and clip, small dims, inputs with large and shifting scales and runs of one repeated
    token: no NaN/inf, bounded weights."""
    torch.manual_seed(0)
    mem = TitansMemory(TitansConfig(dim=16, hidden=32, chunk_size=64))
    sizes, state, seen, calls = {}, None, 0, 0
    g = gen(8)
    with torch.no_grad():
        while seen < 100_000:
            n = 1000 if seen == 0 else min(9000, 100_000 - seen)
            calls += 1
            scale = 10.0 ** torch.randint(-2, 4, (1,), generator=g).item()
            x = torch.randn(1, n, 16, generator=g) * scale + scale
            if calls % 3 == 2:  # one token repeated: identical keys, the worst case for a summed chunk loss
                x = x[:, :1].expand(1, n, 16)
            out, state = mem(x, state)
            seen += n
            assert torch.isfinite(out).all()
            if seen in (1000, 100_000):
                sizes[seen] = state_nbytes(state)
    assert sizes[1000] == sizes[100_000] == mem.state_nbytes(1)
    assert all(torch.isfinite(w).all() and w.abs().max() < 1e3 for w in state.weights + state.momentum)


def test_gradients_reach_parameters_through_inner_updates():
    mem = small_memory()
    x = torch.randn(2, 40, 24, generator=gen(9), dtype=torch.float64)
    out, state = mem(x[:, :20])
    out2, _ = mem(x[:, 20:], state)  # chunks 3-5 read weights written from the first call
    (out.square().mean() + out2.square().mean()).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the gates act only inside the inner updates, so their gradient proves backprop through the updates
    mem.zero_grad()
    _, state = mem(x[:, :20])
    out2, _ = mem(x[:, 20:], state)
    out2.square().mean().backward()
    assert mem.to_gates.weight.grad.abs().sum() > 0 and mem.to_gates.bias.grad.abs().sum() > 0
    mem.zero_grad()
    out3, _ = mem(x[:, 20:], detach_state(state))  # truncated BPTT: no path to the first call's writes
    out3.square().mean().backward()
    assert all(p.grad is None for p in mem.w0) and mem.to_gates.weight.grad.abs().sum() > 0


def test_gram_bound_is_a_tight_upper_bound():
    g = gen(10)
    keys = torch.nn.functional.normalize(torch.randn(3, 64, 32, generator=g, dtype=torch.float64), dim=-1)
    keys[1] = keys[1] * 0.2 + keys[1, :1]  # strongly correlated
    keys = torch.nn.functional.normalize(keys, dim=-1)
    mask = (torch.rand(3, 64, generator=g, dtype=torch.float64) > 0.3).double()
    mask[2] = torch.rand(64, generator=g, dtype=torch.float64)  # soft write weights
    km = keys * mask.sqrt()[..., None]
    exact = torch.linalg.eigvalsh(km.transpose(1, 2) @ km)[:, -1]
    bound = gram_bound(keys, mask)
    assert (bound >= exact * (1 - 1e-9)).all() and (bound <= 1.3 * exact).all()


@pytest.mark.parametrize("depth", [1, 2])
def test_normalized_step_is_stable_for_identical_keys(depth):
    """The worst case for a summed chunk loss: 64 copies of one key. With the step normalised, θ = 0.9
    and no clipping (max_grad_rms huge), the recall error shrinks instead of blowing up."""
    d, c = 16, 64
    g = gen(11)
    k = torch.nn.functional.normalize(torch.randn(1, 1, d, generator=g, dtype=torch.float64), dim=-1).expand(1, c, d)
    v = torch.randn(1, 1, d, generator=g, dtype=torch.float64).expand(1, c, d)
    if depth == 1:
        w = (torch.zeros(1, d, d, dtype=torch.float64),)
    else:
        w = (torch.randn(1, 32, d, generator=g, dtype=torch.float64),
             torch.randn(1, d, 32, generator=g, dtype=torch.float64))
    s = tuple(torch.zeros_like(t) for t in w)
    one, zero = torch.full((1,), 0.9, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    mask = torch.ones(1, c, dtype=torch.float64)
    err0 = (mlp_apply(w, k[:, :1]) - v[:, :1]).norm()
    for _ in range(20):
        w, s = memory_step(w, s, k, v, mask, one, zero, zero, max_grad_rms=1e9)
    err = (mlp_apply(w, k[:, :1]) - v[:, :1]).norm()
    assert torch.isfinite(err) and err < (0.1 if depth == 1 else 0.3) * err0  # the MLP converges more slowly
    # the paper's plain sum diverges here at the same θ
    w2 = (torch.zeros(1, d, d, dtype=torch.float64),)
    s2 = (torch.zeros(1, d, d, dtype=torch.float64),)
    for _ in range(5):
        w2, s2 = memory_step(w2, s2, k, v, mask, one, zero, zero, max_grad_rms=1e9, normalize=False)
    assert (mlp_apply(w2, k[:, :1]) - v[:, :1]).norm() > 1e3 * err0


def test_bfloat16_module_keeps_float32_memory():
    mem = TitansMemory(TitansConfig(dim=32, heads=2, chunk_size=8)).to(torch.bfloat16)
    x = torch.randn(2, 20, 32, dtype=torch.bfloat16)
    out, state = mem(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(t.dtype == torch.float32 for t in state.weights + state.momentum)


def test_read_norm_bounds_the_read_out():
    """read_norm: each head's M_W(q) has unit RMS before to_out, so a linear memory's weights blown up x1000
    (a memory streamed far past its training length) read out what they do at x1 (up to the norm's eps);
    without it, 1000 times as much."""
    x = torch.randn(2, 40, 24, generator=gen(3), dtype=torch.float64)
    for read_norm in (False, True):
        mem = small_memory(depth=1, read_norm=read_norm)
        _, state = mem(x)
        big = state._replace(weights=tuple(w * 1000 for w in state.weights))
        q = x[:, :5]
        small_out, big_out = mem.read(q, state), mem.read(q, big)
        if read_norm:
            torch.testing.assert_close(big_out, small_out, rtol=1e-3, atol=1e-4)
            heads = mem._read(tuple(w.flatten(0, 1) for w in big.weights),
                              mem.project(q)[0].flatten(0, 1))
            torch.testing.assert_close(heads.pow(2).mean(-1), torch.ones(4, 5, dtype=torch.float64))
        else:
            torch.testing.assert_close(big_out, small_out * 1000)
