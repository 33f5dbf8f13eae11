"""Recall brings back whole facts: cut at sentence ends, the asked one over look-alikes, every value under a key,
chains followed (symphony/runtime/facts.py through RecallLedger.search)."""
from __future__ import annotations

import torch

from helpers import DOT, KINDS, TEMPLATE, hay
from symphony.config import load_config
from symphony.runtime.engine import StreamingEngine
from symphony.runtime.facts import TokenKinds
from symphony.runtime.recall import RecallLedger

QUESTION = [50, 12, 13, 14, 23, 51]  # "What is the secret number for the <key 23>?"


def ledger(ids: torch.Tensor, span_len: int = 8) -> RecallLedger:
    led = RecallLedger(capacity_tokens=len(ids) + span_len, span_len=span_len)
    led.add(torch.arange(len(ids)), ids, torch.zeros(len(ids)))
    return led


def plant(ids: torch.Tensor, start: int, fact: list[int]) -> list[int]:
    """Put `fact` at `start`, after a sentence end; returns it."""
    ids[start - 1:start + len(fact)] = torch.tensor([DOT] + fact)
    return fact


def test_a_fact_across_three_spans_is_reread_whole():
    ids = hay(400, seed=1)
    # 20 tokens from position 102: spans 96-103 | 104-111 | 112-119 | 120-127 (span_len 8)
    fact = plant(ids, 102, TEMPLATE + [23, 15] + list(range(30, 43)) + [DOT])
    assert ledger(ids).search(QUESTION, budget_tokens=64, kinds=KINDS) == [fact]
    # without sentence ends: a piece of a fixed 32-token grid (positions 96-127), the fact inside it
    assert ledger(ids).search(QUESTION, budget_tokens=32) == [ids[96:128].tolist()]


def test_four_co_keyed_facts_are_all_reread():
    """RULER's multi-value: four values under one key; the look-alikes of another key stay out."""
    ids = hay(800, seed=2)
    mine = [plant(ids, s, TEMPLATE + [23, 15, 30 + k, 31 + k, DOT]) for k, s in enumerate((60, 230, 410, 600))]
    for s, key in ((150, 21), (330, 22), (700, 24)):
        plant(ids, s, TEMPLATE + [key, 15, 40, 41, DOT])
    assert ledger(ids).search(QUESTION, budget_tokens=192, kinds=KINDS) == mine


def test_the_asked_fact_beats_look_alikes_whose_template_is_rarer_than_its_key():
    """The template's tokens occur only in the four facts (rare: high IDF), the key also in plain hay
    sentences (commoner); the asked fact is cut by span edges, each look-alike sits in one span."""
    ids = hay(1200, seed=3)
    for s in range(30, 1200, 97):
        ids[s] = 23  # the key word, here and there in the haystack
    asked = plant(ids, 517, TEMPLATE + [23, 15, 33, 34, 35, DOT])  # spans 512-519 | 520-527
    for s, key in ((201, 21), (400, 22), (800, 24)):
        s = s // 8 * 8
        plant(ids, s + 1 if s % 8 == 0 else s, TEMPLATE + [key, 15, 36, DOT])
    picked = ledger(ids).search(QUESTION, budget_tokens=192, kinds=KINDS)
    assert picked[0] == asked and len(picked) == 1


def test_a_two_hop_chain_is_followed():
    """Variable tracking: VAR A = 7 7 7; VAR B = VAR A; VAR C = VAR B. The question names only the value."""
    var, eq = 60, 61  # "VAR", " ="; names are pairs of word tokens 70..89
    a, b, c, other = [70, 71], [72, 73], [74, 75], [76, 77]
    ids = hay(900, seed=4)
    lines = [plant(ids, 100, [var, *a, eq, 9, 9, 8, DOT]), plant(ids, 400, [var, *b, eq, var, *a, DOT]),
             plant(ids, 700, [var, *c, eq, var, *b, DOT])]
    plant(ids, 550, [var, *other, eq, 5, 5, 4, DOT])  # another chain's line: shares only the template
    question = [50, 9, 9, 8, 51]  # "Which variables are assigned 998?"
    led = ledger(ids)
    assert led.search(question, budget_tokens=192, kinds=KINDS, hops=4) == lines
    assert led.search(question, budget_tokens=192, kinds=KINDS, hops=1) == lines[:2]
    assert led.search(question, budget_tokens=192, kinds=KINDS, hops=0) == lines[:1]


def test_hops_do_not_follow_template_words_into_look_alikes():
    """The facts' template has a pair the question lacks (": is"); it recurs in every look-alike, so no hop."""
    ids = hay(800, seed=5)
    template = [11, 62, 63, 14]  # 62 63: word tokens the question does not hold
    asked = plant(ids, 300, template + [23, 15, 33, DOT])
    plant(ids, 600, template + [22, 15, 34, DOT])
    assert ledger(ids).search([50, 11, 14, 23, 51], budget_tokens=192, kinds=KINDS, hops=4) == [asked]


def test_token_kinds_cut_sentences_and_lines_not_numbers(tiny_loaded):
    tok = tiny_loaded.tokenizer
    kinds = TokenKinds.from_tokenizer(tok)
    text = "Pi is 3.14 here. Next one\nline two"
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    cuts = torch.nonzero(kinds.after(ids))[:, 0].tolist()
    pieces, lo = [], 0
    for c in cuts:
        pieces.append(tok.decode(ids[lo:c + 1].tolist()))
        lo = c + 1
    assert pieces == ["Pi is 3.14 here.", " Next one\n", "line two"]


def test_engine_rereads_a_uuid_fact_whole(tiny_loaded):
    """Through the engine (byte tokenizer, 8-token spans): a 36-character value spans several spans and its
    sentence comes back whole."""
    cfg = load_config("tiny", ["cache.ledger=16", "cache.window=64", "cache.segment_len=32", "cache.span_len=8",
                               "cache.recall_budget=96"])
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
    stream = eng.new_stream()
    fact = "The code for the vault is 444b8579-afe8-488c-8287-52f71aa983e2."
    doc = "abc def ghi. " * 20 + fact + " jkl mno pqr." * 40
    eng.ingest(stream, eng.encode(doc))
    recalled = eng.tokenizer.decode(eng.recalled(stream, "What is the code for the vault?"))
    assert fact in recalled
