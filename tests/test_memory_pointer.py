"""HEP-DNA pointer: router gradients, zero-gate exactness, copy head can emit what the LM head would not."""
from __future__ import annotations

import torch

from symphony.memory.pointer import CopyHead, RouterScorer, SalienceRouter, causal_source_mask


def test_router_gets_nonzero_gradients_and_learns():
    torch.manual_seed(0)
    router = SalienceRouter(16)
    hidden = torch.randn(4, 32, 16)
    keep = (hidden[..., 0] > 1.0)  # a learnable rule
    loss = router.loss(hidden, keep)
    loss.backward()
    assert router.proj.weight.grad.abs().sum() > 0 and router.proj.bias.grad.abs() > 0
    opt = torch.optim.Adam(router.parameters(), lr=0.05)
    first = loss.item()
    for _ in range(200):
        opt.zero_grad()
        loss = router.loss(hidden, keep)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_router_scorer_adds_to_base_scores():
    router = SalienceRouter(8)
    scorer = RouterScorer(router, base=lambda ids, lg, pl, pos, h: torch.ones(ids.numel()))
    s = scorer(torch.arange(5), None, None, torch.arange(5), hidden=torch.randn(5, 8))
    assert s.shape == (5,) and torch.all(s > 1)


def test_zero_gate_copy_head_leaves_lm_distribution_unchanged():
    torch.manual_seed(0)
    head = CopyHead(hidden_size=16, embed_size=12)
    lm_logits = torch.randn(1, 5, 50)
    out = head(torch.randn(1, 5, 16), lm_logits, torch.randn(1, 7, 12), torch.randint(0, 50, (1, 7)))
    assert torch.allclose(out, torch.log_softmax(lm_logits, -1), atol=1e-6)
    assert torch.equal(out.argmax(-1), lm_logits.argmax(-1))


def test_copy_head_emits_a_token_the_lm_head_ignores_once_gate_opens():
    torch.manual_seed(0)
    vocab, target = 50, 42
    head = CopyHead(hidden_size=16, embed_size=12)
    lm_logits = torch.zeros(1, 1, vocab)
    lm_logits[..., target] = -30.0  # the LM head gives the target ~1e-14
    src_ids = torch.tensor([[3, target, 7]])
    src_embeds = torch.randn(1, 3, 12)
    hidden = torch.randn(1, 1, 16)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    with torch.no_grad():
        head.gate_scale.fill_(0.5)  # open the gate a little; training does the rest
    for _ in range(150):
        opt.zero_grad()
        loss = -head(hidden, lm_logits, src_embeds, src_ids)[0, 0, target]
        loss.backward()
        opt.step()
    assert torch.softmax(lm_logits, -1)[0, 0, target] < 1e-10
    assert head(hidden, lm_logits, src_embeds, src_ids)[0, 0].argmax() == target


def test_copy_head_is_causal():
    torch.manual_seed(0)
    head = CopyHead(8, 8)
    with torch.no_grad():
        head.gate_scale.fill_(1.0)
    src_pos = torch.arange(6)
    mask = causal_source_mask(torch.arange(6), src_pos)
    ids = torch.arange(6)[None] + 10
    emb = torch.randn(1, 6, 8)
    p = head.copy_distribution(torch.randn(1, 6, 8), emb, ids, 20, mask)
    for t in range(6):  # query t may only put mass on tokens strictly before t
        allowed = set((ids[0, :t]).tolist())
        nz = set(torch.nonzero(p[0, t] > 0)[:, 0].tolist())
        assert nz <= allowed
    assert torch.all(p[0, 0] == 0)  # nothing before the first token
