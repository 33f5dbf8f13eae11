"""The HEP-DNA retriever (symphony/memory/retriever.py): span summaries at a fixed byte cost in the recall archive,
and a question worded unlike its fact finding it once the projection is trained (symphony/pipeline/retrieval.py)."""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from helpers import DOT, KINDS, engine, hay
from symphony.config import CacheConfig, recall_span_nbytes
from symphony.memory.checkpoint import load_adapters, save_adapters
from symphony.memory.inject import inject, retriever_of
from symphony.memory.retriever import SpanRetriever, similarity
from symphony.models import load_model
from symphony.pipeline.retrieval import retrieval_example, top1, train_retriever
from symphony.runtime.recall import RecallLedger

DIM = 16
# eight facts of four tokens each (200..231) and their questions (240..255): no token in common, nor with the hay
FACTS = [[200 + 4 * i + k for k in range(4)] + [DOT] for i in range(8)]
QUESTIONS = [[240 + 2 * i, 241 + 2 * i] for i in range(8)]


def summarizer(dim: int = DIM):
    return lambda pooled: SpanRetriever.quantize(torch.nn.functional.normalize(pooled[:, :dim], dim=-1))


def test_summary_bytes_are_fixed_by_the_config_and_counted():
    c = CacheConfig(span_len=8, recall_bytes="64KB")
    assert recall_span_nbytes(8, DIM) == recall_span_nbytes(8) + DIM
    assert c.recall_spans(DIM) == 65536 // recall_span_nbytes(8, DIM) < c.recall_spans()
    sizes = []
    for n in (100, 5000):  # the same bytes at any stream length
        led = RecallLedger(c.recall_spans(DIM) * 8, 8, summary_dim=DIM, summarize=summarizer())
        led.add(torch.arange(n), torch.randint(0, 99, (n,)), torch.rand(n), torch.randn(n, 32))
        sizes.append(led.nbytes())
    assert sizes[0] == sizes[1] == c.recall_nbytes(DIM)
    assert led.summary.shape == (c.recall_spans(DIM), DIM) and led.summary.dtype == torch.int8


def test_a_disk_archive_keeps_its_summaries_across_a_restart(tmp_path):
    led = RecallLedger(0, 8, tmp_path / "a", summary_dim=DIM, summarize=summarizer())
    feats = torch.randn(64, 32)
    led.add(torch.arange(64), torch.arange(64), torch.zeros(64), feats)
    led.flush()
    codes = led.summary[:8].clone()
    assert (codes != 0).any(1).all()
    again = RecallLedger.open(tmp_path / "a")
    assert again.summary_dim == DIM and torch.equal(again.summary[:8], codes)
    with pytest.raises(Exception, match="summaries"):
        RecallLedger(0, 8, tmp_path / "a")  # opened as an archive without summaries: refused, not misread


def test_similarity_of_int8_codes_matches_the_cosine():
    q = torch.nn.functional.normalize(torch.randn(DIM), dim=0)
    rows = torch.nn.functional.normalize(torch.randn(5, DIM), dim=-1)
    got = similarity(q, SpanRetriever.quantize(rows))
    assert torch.allclose(got, rows @ q, atol=0.02)
    assert similarity(q, torch.zeros(1, DIM, dtype=torch.int8)).item() == 0  # no summary: never near


def _model(cfg, dim=DIM, layer=1):
    cfg.memory.retriever_dim, cfg.memory.retriever_layer = dim, layer
    model = load_model(cfg.model, seed=cfg.seed).model
    inject(model, cfg.memory)
    return model


def _document(rng: random.Random, asked: int, n: int = 320) -> tuple[torch.Tensor, int]:
    """Hay with the asked fact and two other facts planted after sentence ends; (ids, the asked fact's start)."""
    ids = hay(n, seed=rng.randrange(10 ** 6))
    others = rng.sample([i for i in range(len(FACTS)) if i != asked], 2)
    starts = sorted(rng.sample(range(20, n - 60, 8), 3))
    at = {}
    for s, i in zip(starts, [asked] + others):
        s += rng.randrange(8)
        ids[s - 1:s + len(FACTS[i])] = torch.tensor([DOT] + FACTS[i])
        at[i] = s
    return ids, at[asked]


def test_a_question_sharing_no_word_with_its_fact_finds_it_once_trained(tiny_cfg):
    model = _model(tiny_cfg)
    eng = engine(model, tiny_cfg, sinks=4, ledger=0, window=48, segment_len=16, span_len=8)
    rng = random.Random(0)
    train = []
    for k in range(96):
        i = k % len(FACTS)
        ids, s = _document(rng, i)
        train.append(retrieval_example(eng, ids, s, s + len(FACTS[i]), QUESTIONS[i]))
    retriever = retriever_of(model)
    losses = train_retriever(retriever, train, steps=150, lr=0.02)
    assert losses[-1] < losses[0] / 4
    held_out = []
    for i in range(len(FACTS)):
        ids, s = _document(rng, i)
        held_out.append((ids, s, i))
    found, found_lexically = 0, 0
    for ids, s, i in held_out:
        stream = eng.new_stream()
        eng.ingest(stream, ids)
        assert not torch.isin(torch.tensor(FACTS[i][:4]), stream.cache.token_ids).all()  # only the archive has it
        summary = eng.question_summary(QUESTIONS[i])
        runs = stream.recall.search(QUESTIONS[i], 16, kinds=KINDS, query_summary=summary, min_similarity=0.0)
        found += any(FACTS[i][:4] == r[j:j + 4] for r in runs for j in range(len(r)))
        lexical = stream.recall.search(QUESTIONS[i], 16, kinds=KINDS)
        found_lexically += any(FACTS[i][:4] == r[j:j + 4] for r in lexical for j in range(len(r)))
    assert found_lexically == 0  # no shared token: the lexical search cannot
    assert found >= 7, found


def test_the_retriever_saves_with_the_adapters_and_older_checkpoints_still_load(tiny_cfg, tmp_path):
    model = _model(dataclasses.replace(tiny_cfg))
    retriever_of(model).proj.weight.data.normal_()
    save_adapters(model, tmp_path / "with")
    fresh = _model(tiny_cfg)
    load_adapters(fresh, tmp_path / "with")
    assert torch.equal(retriever_of(fresh).proj.weight, retriever_of(model).proj.weight)
    tiny_cfg.memory.retriever_dim = 0
    old = load_model(tiny_cfg.model, seed=tiny_cfg.seed).model
    inject(old, tiny_cfg.memory)
    save_adapters(old, tmp_path / "without")  # a run from before the retriever
    again = load_model(tiny_cfg.model, seed=tiny_cfg.seed).model
    inject(again, tiny_cfg.memory)
    load_adapters(again, tmp_path / "without")
    assert retriever_of(again) is None


def test_a_retriever_file_round_trips_and_a_wrong_one_is_refused_in_one_line(tiny_cfg, tmp_path):
    from symphony.errors import SymphonyError
    from symphony.memory.checkpoint import load_retriever, save_retriever, use_retriever

    model = _model(tiny_cfg)
    retriever_of(model).proj.weight.data.normal_()
    retriever_of(model).min_similarity.fill_(0.3)
    f = save_retriever(model, tmp_path / "r.safetensors", "tiny-llama")
    bare = load_model(tiny_cfg.model, seed=tiny_cfg.seed).model
    load_retriever(bare, f, "tiny-llama")
    got, want = retriever_of(bare), retriever_of(model)
    assert torch.equal(got.proj.weight, want.proj.weight) and got.layer == want.layer
    assert float(got.min_similarity) == pytest.approx(0.3)
    use_retriever(bare, "off", "tiny-llama")  # the ablation
    assert retriever_of(bare) is None
    with pytest.raises(SymphonyError, match="trained for model 'tiny-llama'"):
        load_retriever(bare, f, "smollm2-135m")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SymphonyError, match="cannot read the retriever"):
        load_retriever(bare, tmp_path / "junk.safetensors")
    from symphony.config import load_config

    with pytest.raises(SymphonyError, match="memory.retriever"):
        load_config("tiny", [f"memory.retriever={tmp_path / 'missing.safetensors'}"])


def test_the_retriever_adds_no_look_alike_the_lexical_search_already_judged():
    """A question that shares its fact's words: the lexical pick stands; the span nearest by summary (here a
    look-alike of the same template) is not re-read beside it."""
    from helpers import TEMPLATE

    ids = hay(400, seed=5)
    asked = TEMPLATE + [23, 15, 33, 34, DOT]
    other = TEMPLATE + [24, 15, 36, 37, DOT]
    ids[99:100 + len(asked)] = torch.tensor([DOT] + asked)
    ids[299:300 + len(other)] = torch.tensor([DOT] + other)
    feats = torch.zeros(400, 8)
    feats[300:310, 0] = 1.0  # the look-alike's spans are nearest the question's summary
    feats[:, 1] = 0.1
    led = RecallLedger(800, 8, summary_dim=8, summarize=lambda pooled: SpanRetriever.quantize(
        torch.nn.functional.normalize(pooled, dim=-1)))
    led.add(torch.arange(400), ids, torch.zeros(400), feats)
    question = [50, 12, 13, 14, 23, 51]
    near = torch.nn.functional.normalize(torch.tensor([1.0, 0.1, 0, 0, 0, 0, 0, 0]), dim=0)
    assert led.search(question, 64, kinds=KINDS, query_summary=near, min_similarity=0.5) == [asked]
    # with no lexical pick at all, the nearest span's sentences are what comes back
    runs = led.search([250, 251], 64, kinds=KINDS, query_summary=near, min_similarity=0.5)
    assert any(r[i:i + len(other)] == other for r in runs for i in range(len(r))) and sum(map(len, runs)) <= 32
