"""Titans research extensions (symplectic gating, manifold paging; symphony/memory/complexity.py): with the
flags off the memory is bit-for-bit the baseline; the wedge/DMD signals against hand computations; gating
attenuates forgetting monotonically and its scale learns; pages switch exactly when the complexity exceeds
the threshold; reads pool over pages; fixed state size; any split of a stream gives the same result."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from helpers import gen
from symphony.config import MemoryConfig
from symphony.memory import TitansConfig, TitansMemory, state_nbytes
from symphony.memory.complexity import dmd_residual, gated_forget, wedge_complexity
from symphony.memory.kinds import TitansSettings, build_memory
from symphony.memory.titans import chunk_gates, memory_step, mlp_apply, page_switches

BASE = dict(dim=24, heads=2, hidden=20, chunk_size=8, lr_init=0.3, momentum_init=0.8, forget_init=0.05)


def make(**kw) -> TitansMemory:
    torch.manual_seed(0)
    mem = TitansMemory(TitansConfig(**{**BASE, **kw})).double()
    with torch.no_grad():  # data-dependent gates
        mem.to_gates.weight.copy_(torch.randn(mem.to_gates.weight.shape, generator=gen(99), dtype=torch.float64) * 0.3)
    return mem


def legacy_forward(mem: TitansMemory, x, state=None, write_mask=None):
    """TitansMemory.forward as it was before the extensions (verbatim loop over the functional core)."""
    b, s, _ = x.shape
    cfg, c = mem.cfg, mem.cfg.chunk_size
    if state is None:
        state = mem.init_state(b, x.device)
    q, k, v, gates = mem.project(x)
    mask = write_mask.to(k.dtype) if write_mask is not None else k.new_ones(b, s)
    p = state.pending
    k = torch.cat([state.pending_k[:, :, :p], k], dim=2)
    v = torch.cat([state.pending_v[:, :, :p], v], dim=2)
    gates = torch.cat([state.pending_gates[:, :, :p], gates], dim=2)
    mask = torch.cat([state.pending_mask[:, :p], mask], dim=1)
    flat = lambda t: rearrange(t, "b h ... -> (b h) ...")  # noqa: E731
    k, v, gates, q = flat(k), flat(v), flat(gates), flat(q)
    mask = repeat(mask, "b s -> (b h) s", h=mem.heads)
    weights, momentum = tuple(map(flat, state.weights)), tuple(map(flat, state.momentum))
    outs, n = [], p + s
    for start in range(0, n, c):
        end = min(start + c, n)
        lo = max(start, p)
        if end > lo:
            outs.append(mlp_apply(weights, q[:, lo - p:end - p]))
        if end - start == c:
            lr, eta, alpha = chunk_gates(gates[:, start:end], cfg.max_lr)
            weights, momentum = memory_step(weights, momentum, k[:, start:end], v[:, start:end],
                                            mask[:, start:end], lr, eta, alpha, cfg.max_grad_rms, cfg.normalize_step)
    out = rearrange(torch.cat(outs, dim=1), "(b h) s d -> b s (h d)", b=b).to(mem.to_out.weight.dtype)
    unflat = lambda t: rearrange(t, "(b h) ... -> b h ...", b=b)  # noqa: E731
    return mem.to_out(out).to(x.dtype), tuple(map(unflat, weights)), tuple(map(unflat, momentum))


def chunk_complexities(mem: TitansMemory, x, mask=None):
    """The complexity of every complete chunk [(b h), N], from the module's own signal."""
    _, k, _, _ = (t.detach() for t in mem.project(x))
    b, h, s, _ = k.shape
    c = mem.cfg.chunk_size
    mask = torch.ones(b, s, dtype=k.dtype) if mask is None else mask.to(k.dtype)
    kf, mf = rearrange(k, "b h s d -> (b h) s d"), repeat(mask, "b s -> (b h) s", h=h)
    return torch.stack([mem.chunk_complexity(kf[:, i:i + c], mf[:, i:i + c]) for i in range(0, s - c + 1, c)], 1)


# ---- flags off: the baseline, bit for bit ----------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2])
def test_flags_off_bit_equal_to_baseline(depth):
    x = torch.randn(2, 53, 24, generator=gen(1), dtype=torch.float64)
    mask = (torch.rand(2, 53, generator=gen(2)) > 0.3).double()
    for mem in (make(depth=depth), make(depth=depth, use_symplectic_gating=False, num_pages=1, page_threshold=0.5,
                                        complexity_blend=0.0)):
        assert {n for n, _ in mem.named_parameters()} == {"norm.weight", "to_qkv.weight", "to_gates.weight",
                                                         "to_gates.bias", "to_out.weight"} | {
            f"w0.{i}" for i in range(depth)}
        assert not list(mem.buffers())
        with torch.no_grad():
            want, w_want, s_want = legacy_forward(mem, x, write_mask=mask)
            got, state = mem(x, write_mask=mask)
            # and carried across calls, ending mid-chunk
            w2, *_ = legacy_forward(mem, x[:, 20:], mem(x[:, :20], write_mask=mask[:, :20])[1], mask[:, 20:])
            g2, _ = mem(x[:, 20:], mem(x[:, :20], write_mask=mask[:, :20])[1], write_mask=mask[:, 20:])
        assert torch.equal(got, want) and torch.equal(g2, w2)
        assert all(torch.equal(a, b) for a, b in zip(state.weights + state.momentum, w_want + s_want))
        assert state.active_page is None and state.page_switches is None and len(state.weights[0].shape) == 4
        assert state_nbytes(state) == mem.state_nbytes(2)
        assert torch.equal(page_switches(state), torch.zeros(2, 2, dtype=torch.long))


# ---- the complexity signals --------------------------------------------------------------------------

def test_wedge_complexity_against_hand_computation():
    g = gen(3)
    a = F.normalize(torch.randn(3, 6, 2, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(3, 6, 2, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.ones(3, 6, dtype=torch.float64)
    mask[1, 3] = 0  # pairs (2,3) and (3,4) of row 1 do not count
    want = torch.zeros(3, dtype=torch.float64)
    for r in range(3):
        for t in range(1, 6):
            if mask[r, t] == 0 or mask[r, t - 1] == 0:
                continue
            # per plane j: the 2x2 determinant of the points (a_j, b_j) at t-1 and t, i.e. their wedge product
            areas = [torch.linalg.det(torch.stack([torch.stack([a[r, t - 1, j], b[r, t - 1, j]]),
                                                   torch.stack([a[r, t, j], b[r, t, j]])])) for j in range(2)]
            want[r] = max(want[r], math.tanh(math.sqrt(sum(x.item() ** 2 for x in areas))))
    got = wedge_complexity(a, b, mask)
    assert torch.allclose(got, want, atol=1e-12) and (got > 0).all() and (got < math.tanh(2)).all()
    # a flat flow (one repeated state) and a chunk without written pairs have complexity 0
    assert wedge_complexity(a[:, :1].expand(3, 6, 2), b[:, :1].expand(3, 6, 2), mask).abs().max() == 0
    alt = torch.tensor([[1.0, 0, 1, 0, 1, 0]], dtype=torch.float64).expand(3, 6)
    assert wedge_complexity(a, b, alt).abs().max() == 0


def test_dmd_residual():
    g, d, c = gen(4), 16, 12
    # a rotation in a 2-D plane embedded in d dims: a rank-2 linear system explains it exactly
    basis = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0]
    ang = torch.arange(c, dtype=torch.float64) * 0.7
    rot = (torch.stack([ang.cos(), ang.sin()], -1) @ basis.T)[None]
    noise = F.normalize(torch.randn(2, c, d, generator=g, dtype=torch.float64), dim=-1)
    ones = torch.ones(1, c, dtype=torch.float64)
    assert dmd_residual(rot, ones).item() < 1e-10
    res = dmd_residual(noise, ones.expand(2, c))
    assert ((res > 0.3) & (res <= 1)).all()  # unstructured keys: most of Y is not explained by rank 4
    assert dmd_residual(noise, torch.zeros(2, c, dtype=torch.float64)).abs().max() == 0
    # hand check with an explicit SVD (the seed's formula: Y_hat = U_r A~ U_r^T X, A~ = U_r^T Y V_r S_r^-1)
    X, Y = noise[0, :-1].T, noise[0, 1:].T
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    Ur, Sr, Vr = U[:, :4], S[:4], Vh[:4].T
    A = Ur.T @ Y @ Vr @ torch.diag(1 / Sr)
    want = (Y - Ur @ A @ Ur.T @ X).pow(2).sum() / Y.pow(2).sum()
    assert abs(res[0].item() - want.item()) < 1e-10


def test_blended_complexity():
    x = torch.randn(1, 16, 24, generator=gen(5), dtype=torch.float64)
    wedge = chunk_complexities(make(num_pages=2, complexity_blend=0.0), x)
    blend = chunk_complexities(make(num_pages=2, complexity_blend=0.25), x)
    _, k, _, _ = (t.detach() for t in make(num_pages=2).project(x))
    kf = rearrange(k, "b h s d -> (b h) s d")
    dmd = torch.stack([dmd_residual(kf[:, i:i + 8], torch.ones(2, 8, dtype=torch.float64)) for i in (0, 8)], 1)
    assert torch.allclose(blend, 0.75 * wedge + 0.25 * dmd, atol=1e-12)


# ---- symplectic gating -------------------------------------------------------------------------------

def test_gated_forget_is_monotone_attenuation():
    alpha = torch.full((50,), 0.2, dtype=torch.float64)
    cplx = torch.linspace(0, 0.999, 50, dtype=torch.float64)
    for s in (0.0, 0.3, 0.5, 0.99):
        eff = gated_forget(alpha, cplx, torch.tensor(s, dtype=torch.float64))
        assert eff[0] == 0.2 and (eff[1:] <= eff[:-1]).all() and (eff >= 0.2 * (1 - s) - 1e-15).all()
        if s > 0:
            assert (eff[1:] < eff[:-1]).all()  # strictly: more complexity, less forgetting


def test_gating_equals_reference_loop_and_changes_outputs():
    """Gating on = the baseline loop with α_n ← α_n (1 − sigmoid(scale) c_n); the baseline parameters are the
    same for the same seed, so the first chunk (read before any write) is identical and later ones differ."""
    base, mem = make(), make(use_symplectic_gating=True)
    with torch.no_grad():
        mem.complexity_scale.copy_(torch.tensor([1.5, -0.5]))
    assert all(torch.equal(p, dict(mem.named_parameters())[n]) for n, p in base.named_parameters())
    x = torch.randn(2, 40, 24, generator=gen(6), dtype=torch.float64)
    with torch.no_grad():
        got, state = mem(x)
        plain, _ = base(x)
        q, k, v, gates = (rearrange(t, "b h ... -> (b h) ...") for t in mem.project(x))
        cplx = chunk_complexities(mem, x)
        w = tuple(repeat(p, "h o i -> (b h) o i", b=2) for p in mem.w0)
        s = tuple(torch.zeros_like(t) for t in w)
        outs = []
        scale = torch.tensor([1.5, -0.5], dtype=torch.float64).sigmoid().repeat(2)
        for n, i in enumerate(range(0, 40, 8)):
            outs.append(mlp_apply(w, q[:, i:i + 8]))
            lr, eta, alpha = chunk_gates(gates[:, i:i + 8], mem.cfg.max_lr)
            alpha = alpha * (1 - scale * cplx[:, n])
            w, s = memory_step(w, s, k[:, i:i + 8], v[:, i:i + 8], torch.ones(4, 8, dtype=torch.float64),
                               lr, eta, alpha, mem.cfg.max_grad_rms)
        want = mem.to_out(rearrange(torch.cat(outs, 1), "(b h) s d -> b s (h d)", b=2))
    assert torch.allclose(got, want, atol=1e-12)
    assert all(torch.allclose(a, rearrange(b, "(b h) ... -> b h ...", b=2), atol=1e-12)
               for a, b in zip(state.weights, w))
    assert torch.equal(got[:, :8], plain[:, :8]) and (got[:, 16:] - plain[:, 16:]).abs().max() > 1e-6


def test_gradients_reach_gating_scale_and_projections():
    mem = make(use_symplectic_gating=True, num_pages=2, page_threshold=0.3)
    x = torch.randn(2, 40, 24, generator=gen(7), dtype=torch.float64)
    out, state = mem(x[:, :20])
    out2, _ = mem(x[:, 20:], state)
    (out.square().mean() + out2.square().mean()).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {"complexity_scale", "twist", "page_pool"} <= {n for n, _ in mem.named_parameters()}


# ---- manifold paging ---------------------------------------------------------------------------------

def test_page_switches_exactly_when_complexity_exceeds_threshold():
    x = torch.randn(2, 64, 24, generator=gen(8), dtype=torch.float64)
    x[:, 16:24] = x[:, 16:17]  # chunk 2: one repeated token -> complexity exactly 0
    x[1, 40:48] = x[1, 40:41]  # chunk 5 of sequence 1 too
    cplx = chunk_complexities(make(num_pages=3), x)  # [(b h), 8]
    assert (cplx[:, 2] == 0).all() and (cplx[2:, 5] == 0).all() and (cplx[:, [0, 1, 3, 4, 6, 7]] > 0).all()
    middle = cplx[cplx > 0].median().item()  # a hand-checked middle case: about half the chunks switch
    for thr, expect in ((0.0, cplx > 0), (1.0, torch.zeros_like(cplx, dtype=torch.bool)),
                        (middle, cplx > middle), (math.tanh(2), torch.zeros_like(cplx, dtype=torch.bool))):
        mem = make(num_pages=3, page_threshold=thr)
        state, switched = None, []
        with torch.no_grad():
            for i in range(0, 64, 8):  # one chunk per call: record which chunks switched
                before = page_switches(state).flatten() if state is not None else torch.zeros(4, dtype=torch.long)
                _, state = mem(x[:, i:i + 8], state)
                switched.append(page_switches(state).flatten() - before)
            _, one_call = mem(x)
        switched = torch.stack(switched, 1)
        assert torch.equal(switched, expect.long()), thr
        assert torch.equal(page_switches(one_call).flatten(), expect.sum(1))
        assert torch.equal(one_call.active_page.flatten(), expect.sum(1) % 3)  # round-robin
    assert 0 < (cplx > middle).sum() < cplx.numel()
    # threshold 0: every chunk but the repeated-token ones (switch counts 7, 7 | 6, 6 per sequence/head)
    assert (cplx > 0).sum(1).tolist() == [7, 7, 6, 6]


def test_switch_counts_per_sequence_and_head_and_frozen_pages():
    """Threshold >= 1: no switch ever, only page 0 is written; pages 1.. stay at W_0 (frozen, no forgetting)."""
    mem = make(num_pages=3, page_threshold=1.0)
    x = torch.randn(2, 40, 24, generator=gen(9), dtype=torch.float64)
    with torch.no_grad():
        _, state = mem(x)
    assert page_switches(state).shape == (2, 2) and page_switches(state).abs().sum() == 0
    for w, w0 in zip(state.weights, mem.w0):
        assert w.shape[:3] == (2, 2, 3)
        assert torch.equal(w[:, :, 1:], repeat(w0.detach(), "h o i -> b h P o i", b=2, P=2))
        assert not torch.equal(w[:, :, 0], repeat(w0.detach(), "h o i -> b h o i", b=2))
    assert all(m[:, :, 1:].abs().max() == 0 for m in state.momentum)


def test_reads_pool_over_pages_hand_computation():
    """Depth 1 (W_0 = 0), 2 pages, threshold 0: chunk 1 (one repeated token, complexity 0) is written to page 0,
    chunk 2 (random tokens) switches to page 1 and is written there with a fresh momentum. A read is the mean of
    the two pages: the value written on page 0 is still retrieved, at half strength plus page 1's cross-talk."""
    mem = make(depth=1, num_pages=2, page_threshold=0.0, lr_init=0.5, momentum_init=0.5, forget_init=0.2)
    x = torch.randn(1, 16, 24, generator=gen(10), dtype=torch.float64)
    x[:, :8] = x[:, :1]
    with torch.no_grad():
        hd = mem.heads * mem.head_dim
        mem.to_qkv.weight[:hd] = mem.to_qkv.weight[hd:2 * hd]  # q = k: a token's query retrieves its own value
        _, state = mem(x)
        assert page_switches(state).tolist() == [[1, 1]] and state.active_page.tolist() == [[1, 1]]
        q, k, v, gates = (rearrange(t, "b h ... -> (b h) ...") for t in mem.project(x))
        zero = (torch.zeros(2, mem.head_dim, mem.head_dim, dtype=torch.float64),)
        ones = torch.ones(2, 8, dtype=torch.float64)
        page0, _ = memory_step(zero, zero, k[:, :8], v[:, :8], ones, *chunk_gates(gates[:, :8], 1.0),
                               mem.cfg.max_grad_rms)
        page1, _ = memory_step(zero, zero, k[:, 8:], v[:, 8:], ones, *chunk_gates(gates[:, 8:], 1.0),
                               mem.cfg.max_grad_rms)
        assert torch.allclose(state.weights[0][0, :, 0], page0[0], atol=1e-12)  # page 0 frozen after the switch
        assert torch.allclose(state.weights[0][0, :, 1], page1[0], atol=1e-12)
        probe = x[:, :1]  # queries the key stored on page 0
        qp = rearrange(mem.project(probe)[0], "b h ... -> (b h) ...")
        y0, y1 = mlp_apply(page0, qp), mlp_apply(page1, qp)
        want = mem.to_out(rearrange(0.5 * (y0 + y1), "(b h) s d -> b s (h d)", b=1))
        assert torch.allclose(mem.read(probe, state), want, atol=1e-12)
        # page 0 holds the value: its own read is much closer to the stored value than page 1's cross-talk
        vt = v[:, :1]
        cos = lambda a, b: F.cosine_similarity(a, b, dim=-1).flatten()  # noqa: E731
        assert (cos(y0, vt) > 0.999).all() and (cos(0.5 * (y0 + y1), vt) > 0.95).all()
        assert (y1.norm(dim=-1) < 0.25 * y0.norm(dim=-1)).all()  # page 1's cross-talk is small
        # learned pooling: softmax weights over pages
        mem.page_pool.copy_(torch.tensor([[1.0, -1.0], [0.0, 2.0]]))
        pi = mem.page_pool.softmax(-1)[:, :, None, None]
        want = mem.to_out(rearrange(pi[:, 0] * y0 + pi[:, 1] * y1, "(b h) s d -> b s (h d)", b=1))
        assert torch.allclose(mem.read(probe, state), want, atol=1e-12)


def test_paged_memory_at_init_reads_as_unpaged():
    x = torch.randn(2, 13, 24, generator=gen(11), dtype=torch.float64)
    with torch.no_grad():
        a, _ = make()(x[:, :7])  # the first chunk reads W_0
        b, _ = make(num_pages=4, page_threshold=0.0)(x[:, :7])
    assert torch.allclose(a, b, atol=1e-12)


# ---- streaming, state size, config -------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(use_symplectic_gating=True),
                                dict(use_symplectic_gating=True, num_pages=3, complexity_blend=0.3),
                                dict(num_pages=2)])
def test_any_split_of_a_stream_gives_the_same_result(kw):
    x = torch.randn(2, 61, 24, generator=gen(12), dtype=torch.float64)
    mask = (torch.rand(2, 61, generator=gen(13)) > 0.2).double()
    cplx = chunk_complexities(make(**kw), x, mask)
    mem = make(**kw, page_threshold=cplx.median().item())  # some chunks switch, some do not
    with torch.no_grad():
        full, full_state = mem(x, write_mask=mask)
        outs, state, start = [], None, 0
        for n in (16, 3, 1, 20, 13, 8):
            out, state = mem(x[:, start:start + n], state, write_mask=mask[:, start:start + n])
            outs.append(out)
            start += n
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-10)
    if mem.num_pages > 1:
        assert 0 < page_switches(full_state).sum() < 4 * 7
        assert torch.equal(state.active_page, full_state.active_page)
    for a, b in zip(state, full_state):
        if isinstance(a, tuple):
            assert all(torch.allclose(x_, y_, atol=1e-10) for x_, y_ in zip(a, b))
        elif isinstance(a, torch.Tensor):
            assert torch.allclose(a, b, atol=1e-10) if a.is_floating_point() else torch.equal(a, b)
        else:
            assert a == b


def test_causal_with_gating_and_paging():
    mem = make(use_symplectic_gating=True, num_pages=2, page_threshold=0.3)
    x = torch.randn(1, 40, 24, generator=gen(14), dtype=torch.float64)
    with torch.no_grad():
        out, _ = mem(x)
        for t in (0, 9, 23):
            y = x.clone()
            y[:, t + 1:] = torch.randn(1, 40 - t - 1, 24, generator=gen(t), dtype=torch.float64)
            assert torch.equal(mem(y)[0][:, :t + 1], out[:, :t + 1])


def test_state_bytes_fixed_over_1k_and_10k_tokens():
    torch.manual_seed(0)
    mem = TitansMemory(TitansConfig(dim=16, hidden=32, chunk_size=64, use_symplectic_gating=True, num_pages=3,
                                    page_threshold=0.2, complexity_blend=0.5))
    g, state, seen, sizes = gen(15), None, 0, {}
    with torch.no_grad():
        while seen < 10_000:
            n = 1000 if seen == 0 else 1500
            out, state = mem(torch.randn(1, n, 16, generator=g), state)
            seen += n
            assert torch.isfinite(out).all()
            if seen in (1000, 10_000):
                sizes[seen] = state_nbytes(state)
    assert sizes[1000] == sizes[10_000] == mem.state_nbytes(1)
    assert page_switches(state).sum() > 0


def test_config_validation_and_build_memory_passes_flags_through():
    for bad in (dict(num_pages=0), dict(complexity_blend=1.5), dict(complexity_dim=-1)):
        with pytest.raises(ValueError):
            TitansMemory(TitansConfig(**{**BASE, **bad}))
    assert (MemoryConfig().titans.symplectic, MemoryConfig().titans.pages, MemoryConfig().titans.page_threshold) == \
        (False, 1, 0.5)
    mem = build_memory(MemoryConfig(kind="titans", chunk_size=8,
                                    titans=TitansSettings(symplectic=True, pages=3, page_threshold=0.25)),
                       dim=24, model_heads=2)
    assert (mem.cfg.use_symplectic_gating, mem.cfg.num_pages, mem.cfg.page_threshold) == (True, 3, 0.25)
    plain = build_memory(MemoryConfig(kind="titans", chunk_size=8), dim=24, model_heads=2)
    assert (plain.cfg.use_symplectic_gating, plain.cfg.num_pages) == (False, 1) and not plain.uses_complexity
