"""Streaming engine: decoding at constant memory, chat turns, recall ledger, CLI generate/chat."""
from __future__ import annotations

import random

import pytest
import torch
from click.testing import CliRunner

from helpers import DOT, KINDS, TEMPLATE, hay, plant_and_recall
from symphony.cli.main import main
from symphony.config import load_config
from symphony.runtime.chat import ChatSession, iter_text_file
from symphony.runtime.engine import StreamingEngine, sample
from symphony.models.compat import with_cache
from symphony.runtime.recall import RecallLedger


@pytest.fixture
def engine(tiny_loaded, tiny_cfg):
    return StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, tiny_cfg.cache, tiny_cfg.salience)


def test_decode_compacts_so_long_generation_stays_bounded(engine):
    stream = engine.new_stream()
    engine.ingest(stream, torch.randint(0, 250, (300,)))
    out = engine.decode(stream, 400, stop_ids=[])
    assert len(out) == 400
    assert stream.occupied <= engine.capacity + engine.cache_cfg.segment_len
    assert stream.tokens_seen == 300 + 400  # every emitted token is fed back (a stop token is not)


def test_decode_refuses_empty_stream(engine):
    with pytest.raises(ValueError, match="ingest a prompt first"):
        engine.decode(engine.new_stream(), 5)


def test_sample_greedy_and_top_p():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits) == 1
    g = torch.Generator().manual_seed(0)
    assert all(sample(logits, temperature=1.0, top_p=1e-6, generator=g) == 1 for _ in range(20))


def test_chat_session_turns_accumulate_and_stay_bounded(engine):
    session = ChatSession(engine)
    for i in range(12):
        session.say(f"turn {i}: " + "tell me more about streams. " * 10, max_new_tokens=20)
    st = session.status()
    assert st["tokens_seen"] > engine.capacity  # the conversation outgrew the cache...
    assert st["cache_slots"] <= engine.capacity + engine.cache_cfg.segment_len  # ...which stayed bounded
    assert session.turns == 12


def test_iter_text_file_reassembles_and_cuts_at_whitespace(tmp_path):
    text = ("alpha beta\ngamma " * 5000) + "omega"
    path = tmp_path / "doc.txt"
    path.write_text(text)
    pieces = list(iter_text_file(path, chunk_chars=1000))
    assert len(pieces) > 10
    assert "".join(pieces) == text
    assert all(p[-1].isalpha() for p in pieces[:-1])  # cut before a space, never inside a word


def test_recall_ledger_finds_the_piece_holding_the_needle():
    """Without a tokenizer's sentence ends, text is judged in pieces of at most the budget."""
    led = RecallLedger(capacity_tokens=64, span_len=4)
    rng = random.Random(0)
    positions = torch.arange(40)
    ids = torch.tensor([rng.randrange(100, 200) for _ in range(40)])
    ids[20:24] = torch.tensor([7, 8, 9, 10])  # the "needle" span, with tokens found nowhere else
    led.add(positions, ids, torch.zeros(40))
    assert led.search([8, 9, 42], budget_tokens=12) == [ids[12:24].tolist()]
    assert led.search([999], budget_tokens=12) == []  # nothing shares a token: nothing recalled


def test_recall_ledger_is_fixed_size_and_keeps_best_spans():
    led = RecallLedger(capacity_tokens=16, span_len=4)  # 4 spans
    size = led.nbytes()
    for start in range(0, 400, 4):
        score = 10.0 if start in (100, 200) else 0.0
        led.add(torch.arange(start, start + 4), torch.arange(start, start + 4), torch.full((4,), score))
    assert led.nbytes() == size and len(led) == 4
    kept = set(led.start.tolist())
    assert {100, 200} <= kept


def test_engine_recall_reads_archived_needle(tiny_loaded):
    cfg = load_config("tiny", ["cache.ledger=16", "cache.window=32", "cache.segment_len=32"])
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
    needle, recalled = plant_and_recall(eng, eng.new_stream())
    assert needle.tolist() == [t for t in recalled if t in needle.tolist()]


def test_sinks_policy_has_no_ledger_and_same_capacity(tiny_loaded, tiny_cfg):
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, tiny_cfg.cache, tiny_cfg.salience, policy="sinks")
    stream = eng.new_stream()
    eng.ingest(stream, torch.randint(0, 250, (1000,)))
    assert stream.cache.budget.ledger == 0
    assert stream.occupied == eng.capacity
    assert stream.recall is None


def test_cli_chat_with_piped_turns():
    result = CliRunner().invoke(main, ["chat", "-c", "tiny", "--max-new-tokens", "8"],
                                input="hello there\nsecond turn\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("[tokens seen") == 2
    assert "you> hello there" in result.output and "never read" not in result.output


def test_cli_chat_script_and_generate_with_file(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    script = tmp_path / "turns.txt"
    script.write_text("what jumps?\n\nwho is lazy?\n")
    r = CliRunner().invoke(main, ["chat", "-c", "tiny", "--file", str(doc), "--script", str(script),
                                  "--max-new-tokens", "5"])
    assert r.exit_code == 0, r.output
    assert r.output.count("[tokens seen") == 2
    r = CliRunner().invoke(main, ["generate", "-c", "tiny", "--file", str(doc), "-p", "what jumps?",
                                  "--max-new-tokens", "5"])
    assert r.exit_code == 0, r.output
    assert "[tokens seen" in r.output


def test_cli_generate_missing_file_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["generate", "-c", "tiny", "--file", str(tmp_path / "nope.txt"), "-p", "x"])
    assert r.exit_code == 2
    assert "Traceback" not in r.output


@pytest.mark.real_model
def test_smollm2_recalls_needle_beyond_its_window(embedded_model_dir):
    """A fact at 10% of a 3k-token document, with a cache of only 4+128+512 slots: the sinks baseline
    has lost it; Symphony answers it exactly."""
    from symphony.corpus import builtin_text
    from symphony.runtime.engine import engine_from_config
    from symphony.haystack import Needle, build_haystack, contains_answer

    cfg = load_config("smollm2-135m", ["cache.ledger=128", "cache.window=512"])
    eng = engine_from_config(cfg, progress=False)
    needle = Needle("lantern", "7301945", "number")
    ids = build_haystack(eng.tokenizer, builtin_text(), 3000, 0.1, [needle])
    answers = {}
    for policy in ("symphony", "sinks"):
        e = StreamingEngine(eng.model, eng.tokenizer, cfg.cache, cfg.salience, policy=policy)
        stream = e.new_stream()
        before, after = e.chat_format.first_user
        e.ingest(stream, e.encode(before))
        e.ingest(stream, torch.tensor(ids))
        e.ask(stream, "\n\n" + needle.question, after)
        answers[policy] = eng.tokenizer.decode(e.decode(stream, 24), skip_special_tokens=True)
    assert contains_answer(answers["symphony"], needle.value), answers
    assert not contains_answer(answers["sinks"], needle.value), answers


@pytest.mark.real_model
def test_smollm2_bounded_cache_with_large_budget_is_bit_equal(embedded_model_dir):
    """SmolLM2: generate() with a BoundedCache larger than the input equals DynamicCache bit for bit,
    and the engine's segmented greedy decoding gives the same tokens."""
    from transformers import DynamicCache

    from symphony.runtime.cache import BoundedCache
    from symphony.corpus import builtin_text
    from symphony.runtime.engine import engine_from_config

    cfg = load_config("smollm2-135m", ["cache.ledger=4000", "cache.window=4000", "cache.segment_len=128"])
    eng = engine_from_config(cfg, progress=False)
    m, tok = eng.model, eng.tokenizer
    ids = tok(builtin_text()[:2000], return_tensors="pt").input_ids[:, :300]
    ref = m.generate(ids, **with_cache(m, DynamicCache(config=m.config), max_new_tokens=12, do_sample=False))
    got = m.generate(ids, **with_cache(m, BoundedCache.for_model(m, 4, 4096, 4096), max_new_tokens=12, do_sample=False))
    assert torch.equal(ref, got)
    stream = eng.new_stream()
    eng.ingest(stream, ids[0])
    assert eng.decode(stream, 12, stop_ids=[]) == ref[0, 300:].tolist()


def test_recall_leaves_out_facts_that_only_repeat_the_question_template():
    """Four facts share a template ("secret number for the <key> is <value>."); a question about one key
    recalls that fact, not the distractors (they add no query term the first pick lacks)."""
    led = RecallLedger(capacity_tokens=400, span_len=8)
    ids = hay(400, seed=0)
    facts = {44: 21, 120: 22, 237: 23, 320: 24}  # start -> key token; values are 31..34
    for start, key in facts.items():
        ids[start - 1:start + 8] = torch.tensor([DOT] + TEMPLATE + [key, 15, 10 + key, DOT])
    led.add(torch.arange(400), ids, torch.zeros(400))
    question = [50, 12, 13, 14, 23, 51]  # "What is the secret number for the <key 23>?"
    assert led.search(question, budget_tokens=200, kinds=KINDS) == [ids[237:245].tolist()]
    # a question naming two keys recalls both facts: the second adds a rare term the first lacks
    both = led.search([50, 12, 13, 14, 23, 52, 14, 21, 51], budget_tokens=200, kinds=KINDS)
    assert both == [ids[44:52].tolist(), ids[237:245].tolist()]


def test_recall_rereads_the_fact_from_the_window_not_an_archived_look_alike():
    """The asked fact is still in the window; a distractor sharing its template is archived. Recall must
    re-read the window's fact (or nothing new), never the distractor alone: read right before the question,
    a small model answers from it (seen at 8k with a 2,052-slot cache: the violin's number for the tunnel's)."""
    led = RecallLedger(capacity_tokens=400, span_len=8)
    ids = hay(300, seed=2)
    ids[79:88] = torch.tensor([DOT] + TEMPLATE + [22, 15, 32, DOT])  # archived distractor (key 22)
    ids[263:272] = torch.tensor([DOT] + TEMPLATE + [23, 15, 33, DOT])  # the asked fact (key 23), in the window
    led.add(torch.arange(250), ids[:250], torch.zeros(250))  # positions 250.. are still in the window
    question = [50, 12, 13, 14, 23, 51]
    assert led.search(question, budget_tokens=200, kinds=KINDS) == [ids[80:88].tolist()]  # archive alone: the bug
    live = (torch.arange(236, 300), ids[236:300])  # the cache's slots: some archived already, then the window
    assert led.search(question, budget_tokens=200, kinds=KINDS, live=live) == [ids[264:272].tolist()]
    # a span cut by the archive's end is one candidate, both parts merged
    ids[245:254] = torch.tensor([DOT] + TEMPLATE + [24, 15, 34, DOT])  # 246-249 archived, the rest live
    led.add(torch.arange(250), ids[:250], torch.zeros(250))
    live = (torch.arange(236, 300), ids[236:300])
    assert led.search([50, 12, 13, 14, 24, 51], budget_tokens=200, kinds=KINDS, live=live) == [ids[246:254].tolist()]


def test_recall_in_a_chat_ignores_the_previous_question_in_the_window(tiny_loaded):
    """Second question of a chat: the first question (same template) is still in the window. It is the
    conversation, not the document: recall must re-read the archived fact, not the previous turn."""
    cfg = load_config("tiny", ["cache.ledger=16", "cache.window=160", "cache.segment_len=32", "cache.recall_budget=48"])
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
    stream = eng.new_stream()
    rng = random.Random(3)
    hay = "".join(rng.choice("abcdefghij ") for _ in range(600))
    doc = hay[:100] + " THE VAULT KEY: MAT. " + hay[100:200] + " THE LAMP KEY: CAB. " + hay[200:]
    eng.ingest(stream, eng.encode(doc))
    eng.ask(stream, "WHERE IS THE LAMP KEY? ANSWER IN WORDS.", "\n")  # longer than the facts: out-covers them
    eng.decode(stream, 8, stop_ids=[])
    recalled = eng.tokenizer.decode(eng.recalled(stream, "WHERE IS THE VAULT KEY? ANSWER IN WORDS."))
    assert "THE VAULT KEY" in recalled
    assert "LAMP" not in recalled
