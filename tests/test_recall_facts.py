"""Recall brings back whole facts: cut at sentence ends, the asked one over look-alikes, every value under a key,
chains followed (symphony/runtime/facts.py through RecallLedger.search)."""
from __future__ import annotations

import pytest
import torch

from helpers import DOT, KINDS, TEMPLATE, hay
from symphony.config import load_config
from symphony.runtime.copying import CopyRule
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


def toy_words(**texts: str):
    """Words of the toy vocabulary: DOT spells ".", token i " w<i>" unless `texts` (t<i>=...) says otherwise."""
    from symphony.runtime.facts import Words

    vocab = [f" w{i}" for i in range(300)]
    vocab[DOT] = "."
    for name, text in texts.items():
        vocab[int(name[1:])] = text
    return Words.from_texts(vocab)


@pytest.mark.parametrize("fact_key", [[90], [91, 92]], ids=["line-start", "capitals-in-two-pieces"])
def test_a_key_spelt_otherwise_in_the_fact_still_finds_it(fact_key):
    """The question writes the key " Tarrant" (one token); the fact "Tarrant" at a line start, or "TAR" + "RANT"
    as in `TARRANT_API_TOKEN`: other token ids, the same word (`TokenKinds.words`), so the asked fact beats its
    three look-alikes; compared by token id the key is no shared term and a look-alike is as good a pick."""
    import dataclasses

    words = toy_words(t80=" Tarrant", t90="Tarrant", t91="TAR", t92="RANT")
    ids = hay(800, seed=6)
    for s, key in ((150, [82]), (330, [84]), (520, [86])):
        plant(ids, s, key + TEMPLATE[1:] + [15, 36, DOT])
    asked = plant(ids, 700, fact_key + TEMPLATE[1:] + [15, 33, 34, DOT])
    question = [50, 12, 13, 14, 80, 51]
    as_words = dataclasses.replace(KINDS, words=words)
    assert ledger(ids).search(question, budget_tokens=192, kinds=as_words) == [asked]
    assert asked not in ledger(ids).search(question, budget_tokens=192, kinds=KINDS)[:1]


def test_a_word_cut_by_a_span_edge_is_one_word_in_both_spans():
    """"TAR" ends one span, "RANT" starts the next: both spans hold the word "tarrant" (what the archive counts
    and searches), while two rows that are not consecutive in the stream start words of their own."""
    words = toy_words(t80=" Tarrant", t91="TAR", t92="RANT")
    rows = torch.tensor([[100, DOT, 91], [92, 102, 103], [92, 104, 105]])
    spelt = words(rows, joined=torch.tensor([False, True, False]))
    tarrant = int(words(torch.tensor([80]))[0])
    assert spelt[0, 2] == spelt[1, 0] == tarrant and spelt[2, 0] != tarrant
    assert int(words(torch.tensor([92]))[0]) != tarrant


def test_a_question_line_break_does_not_split_co_keyed_facts():
    """Four facts under one key, one of them ending in a line break instead of a full stop. The question starts
    with a line break too (as a user message does): a term only that fact would hold, were layout a term, so the
    other three would no longer be its siblings. Only tokens with a letter or digit are terms."""
    import dataclasses

    newline = 17
    content = torch.ones(300, dtype=torch.bool)
    content[[DOT, newline]] = False
    breaks = KINDS.newline.clone()
    breaks[newline] = True
    kinds = dataclasses.replace(KINDS, content=content, newline=breaks)
    ids = hay(800, seed=7)
    ids[ids == newline] = DOT
    facts = [plant(ids, 100, [61, 23, 62, 30, 31, newline]), plant(ids, 300, [63, 23, 64, 32, 33, DOT]),
             plant(ids, 500, [65, 66, 23, 34, DOT]), plant(ids, 700, [67, 23, 68, 35, 36, DOT])]
    question = [newline, 50, 23, 51]
    assert ledger(ids).search(question, budget_tokens=192, kinds=kinds) == facts


@pytest.mark.real_model
def test_token_kinds_read_a_name_as_one_word_however_it_is_tokenised(embedded_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    words = TokenKinds.from_tokenizer(tok).words
    spelt = lambda s: words(torch.tensor(tok(s, add_special_tokens=False).input_ids)).tolist()  # noqa: E731
    word = lambda s: spelt(s)[-1]  # noqa: E731  the last word of s (every token of a word has its id)
    assert word(" Marlowe") == word("Marlowe") == word("(Marlowe") == word("MARLOWE")
    assert word(" Quenby") == word("Quenby") and word(" the") == word("The") and word(" Marlowe") != word(" Marlow")
    assert word(" Tarrant") in spelt("TARRANT_API_TOKEN") and word(" token") == word("TARRANT_API_TOKEN")
    assert word(" hard-cabin") != word(" in")  # "cab" + "in": a piece is not the word it spells alone


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


def _pieces(tok, kinds: TokenKinds, text: str) -> list[str]:
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    pieces, lo = [], 0
    for c in torch.nonzero(kinds.after(ids))[:, 0].tolist():
        pieces.append(tok.decode(ids[lo:c + 1].tolist()))
        lo = c + 1
    return pieces


@pytest.mark.real_model
def test_token_kinds_keep_abbreviations_and_initials_inside_the_sentence(embedded_model_dir):
    """SmolLM2's tokenizer writes "Dr." as " Dr" + "."; the full stop after an abbreviation or an initial does not
    cut the fact, one that ends a sentence still does (a one-letter word that merely ends a word does not count)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    kinds = TokenKinds.from_tokenizer(tok)
    text = ("Dr. Voss's office is in room 4417. Mr. Lee served in the U.S. Army, e.g. at St. Louis. "
            "He liked plan B. Then he left.")
    assert _pieces(tok, kinds, text) == ["Dr. Voss's office is in room 4417.",
                                         " Mr. Lee served in the U.S. Army, e.g. at St. Louis.",
                                         " He liked plan B. Then he left."]


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


UUID = "444b8579-afe8-488c-8287-52f71aa983e2"


def test_copy_rule_reproduces_a_36_character_value(tiny_loaded):
    """The model (here: scripted logits) drops characters of a value it copies; each time the true next token is
    among its top 5, the rule restores it, and the value comes out exactly."""
    tok = tiny_loaded.tokenizer
    source = tok(f"noise. The code for the vault is {UUID}. more noise", add_special_tokens=False).input_ids
    truth = tok(f" {UUID}.", add_special_tokens=False).input_ids
    rule = CopyRule(source, min_match=3)
    reply: list[int] = []
    for step, want in enumerate(truth):
        logits = torch.zeros(len(tok))
        wrong = truth[step + 1] if step + 1 < len(truth) else tok.eos_token_id  # skips a character
        logits[wrong] = 5.0
        logits[want] = 4.0  # second choice
        model_pick = int(torch.argmax(logits))
        reply.append(rule.choose(reply, logits, model_pick) if step >= 3 else want)  # the model starts the copy
    assert tok.decode(reply) == f" {UUID}."
    # without a match, or when the source's next token is not among the model's top k, the model's token stands
    assert rule.choose([1, 2], torch.zeros(len(tok)), 7) == 7
    far = torch.zeros(len(tok))
    far[:10] = 9.0
    assert rule.choose(truth[:5], far, 3) == 3


def test_copy_rule_prefers_the_longest_match_then_the_model():
    rule = CopyRule([1, 2, 3, 4, 9, 0, 5, 2, 3, 4, 8], min_match=2)
    assert rule.continuations([1, 2, 3, 4]) == [9]  # "1 2 3 4" matches 4 tokens at the first place, 3 at the second
    assert rule.continuations([7, 3, 4]) == [9, 8]  # both places match 2: the model chooses
    logits = torch.zeros(10)
    logits[8] = 1.0
    assert rule.choose([7, 3, 4], logits, 0) == 8


def test_copy_resumes_after_a_reply_prefix_that_restated_the_key():
    """RULER's reply prefix restates the key then says "mentioned in the provided text is", which the fact lacks:
    the copy resumes at the fact's value once the model rates it near its own choice (here: a look-alike's value
    from the window is its first choice), and continues to the end of the fact, not into the next one."""
    key, value, other, NL = [40, 41, 42], [50, 51, 52, 53], [60, 61], 9
    source = [30, 31] + key + [32, 33] + value + [DOT, NL] + [30, 31, 70, 71, 72, 32, 33, 80, 81, DOT, NL]
    content = torch.ones(100, dtype=torch.bool)
    content[[DOT, NL]] = False
    rule = CopyRule(source, min_match=3, prefix=[30, 31] + key + [34, 35, 32], breaks=[NL], content=content)
    reply: list[int] = []
    for want in [33] + value:
        logits = torch.zeros(100)
        logits[other[0] if not reply else 99] = 6.0  # the model's own pick: a look-alike's value
        logits[want] = 4.5  # within the margin
        reply.append(rule.choose(reply, logits, int(torch.argmax(logits))))
    assert reply == [33] + value
    layout = torch.zeros(100)
    layout[NL], layout[DOT] = 6.0, 5.0  # the model ends the value with a line break (a list), not the full stop
    assert rule.choose(reply, layout, NL) == NL  # punctuation and layout stay the model's
    assert rule.choose(reply, layout, DOT) == DOT
    nxt = torch.zeros(100)
    nxt[99], nxt[NL], nxt[30] = 6.0, 5.0, 5.0
    assert rule.choose(reply + [DOT], nxt, 99) == 99  # the fact ended: no copy past the newline into the next
    # far below the model's choice (beyond the margin), or no restated key: the model's token stands
    low = torch.zeros(100)
    low[other[0]], low[33] = 9.0, 4.5
    assert CopyRule(source, 3, prefix=[30, 31] + key + [34, 35, 32], breaks=[NL]).choose([], low, other[0]) == other[0]
    near = torch.zeros(100)
    near[other[0]], near[33] = 6.0, 5.0
    assert CopyRule(source, 3, prefix=[1, 2, 3, 34, 35, 32], breaks=[NL]).choose([], near, other[0]) == other[0]


def test_copy_resumes_at_the_value_when_the_model_declines_the_colon_before_it():
    """RULER's 32k single_3 miss: the reply restated "strange-bell is", the fact goes on ": b80e...", the model
    wrote " 1" and the continuation (":", punctuation) is never forced; the copy resumes at the value if the model
    rates it near its own choice. A value's own token the model declines is not skipped over."""
    key, value, COLON, NL = [40, 41, 42, 43], [50, 51, 52, 53], 34, 9
    source = [30, 31] + key + [COLON] + value + [DOT, NL]
    content = torch.ones(100, dtype=torch.bool)
    content[[DOT, NL, COLON]] = False
    logits = torch.zeros(100)
    logits[99], logits[50], logits[COLON] = 6.0, 4.5, 1.0
    rule = CopyRule(source, min_match=3, prefix=[70] + key, breaks=[NL], content=content)
    reply = [rule.choose([], logits, 99)]
    for want in value[1:]:
        step = torch.zeros(100)
        step[98], step[want] = 6.0, 5.0
        reply.append(rule.choose(reply, step, 98))
    assert reply == value
    far = torch.zeros(100)
    far[99], far[50] = 6.0, 1.0  # beyond the margin: the model's token stands
    assert CopyRule(source, 3, prefix=[70] + key, breaks=[NL], content=content).choose([], far, 99) == 99
    mid = torch.zeros(100)
    mid[99], mid[52] = 6.0, 5.0  # declines the value's 52 and rates the next, 53, near: no skipping
    assert CopyRule(source, 3, prefix=[70] + key + [COLON, 50], breaks=[NL], content=content).choose([], mid, 99) == 99


def test_decode_copies_the_reread_text(tiny_loaded, monkeypatch):
    """Through the engine: after a question that recall answered, decode consults the rule with the re-read ids;
    cache.recall_copy=0 turns it off."""
    seen = []
    monkeypatch.setattr(CopyRule, "choose", lambda self, reply, logits, chosen: seen.append(self.source) or chosen)
    for copy, expect in (("3", True), ("0", False)):
        seen.clear()
        cfg = load_config("tiny", ["cache.ledger=16", "cache.window=64", "cache.segment_len=32",
                                   f"cache.recall_copy={copy}"])
        eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
        stream = eng.new_stream()
        eng.answer("What is the code for the vault?", "abc def. " * 20 + f"The code for the vault is {UUID}." +
                   " ghi jkl." * 40, stream=stream, max_new_tokens=4)
        assert bool(seen) == expect
        if expect:
            assert seen[0] == stream.reread and UUID in tiny_loaded.tokenizer.decode(stream.reread)


def test_hops_leave_three_look_alikes_out():
    """NoLiMa-style: the question shares only the name with its fact; the fact's other words ("sheep graze on
    the ... estate") recur in three look-alikes. Neither the first pick nor a hop brings them back."""
    ids = hay(900, seed=6)
    sheep = [62, 63, 64, 65]  # "Exactly N sheep graze on the"
    asked = plant(ids, 400, sheep + [80, 81, 66, 5, 5, DOT])  # name: the pair 80 81
    for s, name in ((100, [82, 83]), (250, [84, 85]), (700, [86, 87])):
        plant(ids, s, sheep + name + [66, 6, 6, DOT])
    assert ledger(ids).search([50, 52, 80, 81, 53], budget_tokens=192, kinds=KINDS, hops=4) == [asked]


def test_a_rare_name_of_common_sub_tokens_outweighs_common_words():
    """The name is a pair of tokens that are each common in the haystack; as a pair it occurs once. A sentence
    holding the question's other (commoner) word must not come first."""
    ids = hay(1000, seed=7)
    a, b = 90, 91  # in nearly every span, never side by side
    ids[0::4], ids[2::6] = a, b
    asked = plant(ids, 600, [70, a, b, 71, 5, DOT])
    plant(ids, 300, [72, 52, 73, DOT])  # the question's word 52, rarer than a or b, commoner than the pair
    plant(ids, 800, [74, 52, 75, DOT])
    assert ledger(ids).search([50, a, b, 52, 51], budget_tokens=6, kinds=KINDS) == [asked]  # room for one


def test_a_look_alike_run_on_with_common_question_words_stays_out():
    """A look-alike whose unit runs on from a hay sentence holding four common words of the question (no sentence
    end between them) adds four light terms no pick holds; only a single heavy new term (another asked key) may
    bring a unit in beside the first pick, not a sum of light ones."""
    ids = hay(1600, seed=8)
    common = [100, 101, 102, 103]
    for s in range(3, 1600, 7):
        ids[s] = common[s % 4]  # words found all over the haystack
    asked = plant(ids, 300, TEMPLATE + [23, 15, 33, DOT])
    for s, key in ((700, 21), (1100, 22)):
        plant(ids, s, TEMPLATE + [key, 15, 34, DOT])
    ids[894:908] = torch.tensor([DOT, *common, *TEMPLATE, 24, 15, 35, 36, DOT])  # "the function, e. One of ..."
    question = [50, 12, 13, 14, 23, 50, 100, 50, 101, 50, 102, 50, 103, 51]
    assert ledger(ids).search(question, budget_tokens=192, kinds=KINDS) == [asked]
