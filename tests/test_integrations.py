"""symphony.generate (model.generate's interface through a bounded cache) and SymphonyPipeline (kvpress's
`pipe(context, question=...)`), over a model and tokenizer loaded the ordinary way."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache, TextStreamer, pipeline
from transformers.generation.streamers import BaseStreamer
from transformers.pipelines import PIPELINE_REGISTRY

import symphony
from symphony.errors import SymphonyError
from symphony.integrations import SymphonyPipeline
from symphony.integrations.generate import cache_config_for
from symphony.models.compat import cache_kwarg, with_cache
from symphony.models.info import kv_bytes_per_token
from symphony.models.tiny import byte_tokenizer, tiny_model
from symphony.runtime.cache import cache_nbytes

WINDOW = 512  # the tiny model's trained context


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("tiny-llama"), byte_tokenizer()


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def reference(model, ids, **kwargs):
    return model.generate(ids, **with_cache(model, DynamicCache(config=model.config), do_sample=False, **kwargs))


# ---- symphony.generate -------------------------------------------------------------------------------------------

def test_public_names():
    from symphony.integrations import generate as module

    assert symphony.generate is module.generate
    assert symphony.SymphonyPipeline is SymphonyPipeline
    assert "symphony-text-generation" in PIPELINE_REGISTRY.get_supported_tasks()


@pytest.mark.parametrize("segment_len", [256, 64])
def test_generate_within_budget_equals_model_generate(tiny, segment_len):
    """A prompt inside the budget: the same tokens as model.generate with a DynamicCache, bit for bit, whether the
    prompt is prefilled in one forward or in chunks; do_sample=False is greedy whatever the temperature."""
    model, tok = tiny
    ids = random_ids(150, seed=1)
    ref = reference(model, ids, max_new_tokens=12)
    got = symphony.generate(model, tok, ids, max_new_tokens=12, do_sample=False, temperature=0.7,
                            segment_len=segment_len)
    assert got.dtype == torch.long and got.shape == (1, 162)
    assert torch.equal(got, ref)
    text = "The quick brown fox jumps over the lazy dog. " * 3
    assert torch.equal(symphony.generate(model, tok, text, max_new_tokens=12),
                       reference(model, tok(text, return_tensors="pt").input_ids, max_new_tokens=12))


def test_generate_stops_at_eos_and_returns_it_like_model_generate(tiny):
    model, tok = tiny
    ids = random_ids(40, seed=2)
    eos = int(reference(model, ids, max_new_tokens=12)[0, 43])  # the 4th greedy token
    ref = reference(model, ids, max_new_tokens=12, eos_token_id=eos)
    got = symphony.generate(model, tok, ids, max_new_tokens=12, eos_token_id=eos)
    assert got.shape == (1, 44) and torch.equal(got, ref)


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


def test_generate_feeds_a_streamer_as_generation_mixin_does(tiny, capsys):
    """The prompt once [1, n], then each new token, then end(); transformers' TextStreamer prints the new text."""
    model, tok = tiny
    prompt = "Once upon a time, in a land far away, "
    ids = tok(prompt, return_tensors="pt").input_ids
    rec = Recorder()
    out = symphony.generate(model, tok, prompt, max_new_tokens=10, streamer=rec)
    assert torch.equal(rec.puts[0], ids) and rec.ended == 1
    assert [int(p) for p in rec.puts[1:]] == out[0, ids.shape[1]:].tolist()
    assert all(p.shape == (1,) for p in rec.puts[1:])

    capsys.readouterr()
    out = symphony.generate(model, tok, prompt, max_new_tokens=10, streamer=TextStreamer(tok, skip_prompt=True))
    assert capsys.readouterr().out == tok.decode(out[0, ids.shape[1]:]) + "\n"  # end() closes the line


def _watch(model):
    """Record the largest RoPE position and the most KV bytes the cache holds during any forward."""
    seen = {"position": -1, "bytes": 0, "forwards": 0}

    def rope(module, args, kwargs):
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        seen["position"] = max(seen["position"], int(pos.max()))

    def forward(module, args, kwargs, output):  # after the forward's append, before the engine compacts
        seen["bytes"] = max(seen["bytes"], cache_nbytes(kwargs[cache_kwarg(module)]))
        seen["forwards"] += 1

    hooks = [model.model.rotary_emb.register_forward_pre_hook(rope, with_kwargs=True),
             model.register_forward_hook(forward, with_kwargs=True)]
    return seen, hooks


def test_generate_keeps_positions_in_context_and_cache_bytes_constant(tiny):
    """A prompt 10x the model's trained context streams in chunks: no RoPE position ever reaches the context, and
    the cache's peak bytes are those of a prompt 2x the context (the budget, plus one segment)."""
    model, tok = tiny
    slots, seg = 192, 64
    peaks = {}
    for n in (2 * WINDOW, 10 * WINDOW + 37):
        seen, hooks = _watch(model)
        try:
            out = symphony.generate(model, tok, random_ids(n, seed=n), max_new_tokens=80, cache_slots=slots,
                                    segment_len=seg)
        finally:
            for h in hooks:
                h.remove()
        assert out.shape == (1, n + 80)
        assert seen["position"] == slots + seg - 1 < WINDOW  # reached: the budget plus one segment, no more
        peaks[n] = seen["bytes"]
    per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
    assert peaks[2 * WINDOW] == peaks[10 * WINDOW + 37] == (slots + seg) * per_token


def test_generate_refuses_bad_calls_in_one_line(tiny):
    model, tok = tiny
    ids = random_ids(20)
    cases = {
        "does not take num_beams, top_k": dict(top_k=5, num_beams=2),
        "past the model's 512-token context; give cache_slots=256": dict(cache_slots=400),
        "one sequence at a time": dict(input_ids=torch.zeros(2, 5, dtype=torch.long)),
        "cache_slots= or cache_bytes=, not both": dict(cache_slots=100, cache_bytes="1MB"),
        "cache.policy": dict(policy="nope"),
        "cannot hold sinks 4 + ledger 100": dict(cache_slots=64, ledger=100),
    }
    for message, kwargs in cases.items():
        prompt = None if "input_ids" in kwargs else ids
        with pytest.raises(SymphonyError) as err:
            symphony.generate(model, tok, prompt, **kwargs)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_budget_keywords(tiny):
    model, _ = tiny
    c = cache_config_for(model, cache_slots=200)
    assert (c.sinks, c.ledger, c.window) == (4, 50, 146)
    c = cache_config_for(model, cache_slots=200, window=100)
    assert (c.sinks, c.ledger, c.window) == (4, 96, 100)
    c = cache_config_for(model, cache_bytes="100KB", policy="sinks")  # 512 bytes of KV per token
    assert c.sinks + c.ledger + c.window == 200 and c.policy == "sinks"
    c = cache_config_for(model)  # the default budget, shrunk to the tiny model's 512 positions
    assert c.sinks + c.ledger + c.window + c.segment_len == WINDOW


# ---- SymphonyPipeline --------------------------------------------------------------------------------------------

def text_of(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["river", "stone", "lamp", "garden", "window", "cloud", "letter", "bridge", "song", "harbor"]
    out = []
    while sum(len(w) + 1 for w in out) < n_chars:
        out.append(rng.choice(words))
    return " ".join(out)[:n_chars]


@pytest.fixture(scope="module")
def pipe(tiny):
    model, tok = tiny
    return pipeline("symphony-text-generation", model=model, tokenizer=tok, device=-1, cache_slots=192,
                    segment_len=64, max_new_tokens=12)


def test_pipeline_cache_bytes_do_not_grow_with_the_context(pipe, tiny):
    """A context 4x the model's window holds the same KV bytes as a short one past the budget: the budget's."""
    model, _ = tiny
    short = pipe(text_of(300, 0), question="Which word comes first?")
    long = pipe(text_of(4 * WINDOW, 1), question="Which word comes first?")
    assert set(long) == {"answer", "tokens_seen", "cache_bytes"} and isinstance(long["answer"], str)
    assert long["tokens_seen"] > 4 * WINDOW > short["tokens_seen"] > 192
    assert long["cache_bytes"] == short["cache_bytes"] == 192 * kv_bytes_per_token(model.config, 4)


def test_pipeline_questions_share_one_pass_and_do_not_see_each_other(pipe, tiny):
    """questions=[...] answers each as if asked alone, which is what chat.answer gives for that question."""
    model, tok = tiny
    context, questions = text_of(3 * WINDOW, 2), ["Which word comes first?", "How many bridges?", "Name a song."]
    together = pipe(context, questions=questions)
    alone = [pipe(context, question=q)["answer"] for q in questions]
    assert together["answers"] == alone and len(set(alone)) == len(alone)  # different questions, different answers
    assert pipe(context, questions=questions[::-1])["answers"] == alone[::-1]
    engine = symphony.StreamingEngine(model, tok, cache_config_for(model, cache_slots=192, segment_len=64))
    assert engine.answer(questions[1], context, max_new_tokens=12) == alone[1]


def test_pipeline_class_for_the_text_generation_task(tiny):
    model, tok = tiny
    pipe = pipeline(task="text-generation", model=model, tokenizer=tok, pipeline_class=SymphonyPipeline, device=-1)
    assert isinstance(pipe, SymphonyPipeline)
    context = text_of(2 * WINDOW, 3)
    out = pipe(context=context, question="Which word?", max_new_tokens=4, cache_bytes="100KB")
    assert out["cache_bytes"] == 200 * kv_bytes_per_token(model.config, 4)  # 100 KiB of 512-byte tokens
    ids = tok(context, add_special_tokens=False, return_tensors="pt").input_ids
    assert pipe(ids, question="Which word?", max_new_tokens=4, cache_bytes="100KB") == out  # token ids: the same
    batch = pipe([context, "short"], question="Which word?", max_new_tokens=4, cache_bytes="100KB")
    assert len(batch) == 2 and batch[0] == out  # a list of contexts is a batch, one output each
    with pytest.raises(SymphonyError, match="does not take press"):
        pipe("text", question="q", press=object())
    with pytest.raises(SymphonyError, match="not both"):
        pipe("text", question="q", questions=["q"])


@pytest.mark.real_model
def test_smollm2_pipeline_answers_a_planted_fact_from_4x_its_context(embedded_model_dir):
    """SmolLM2 as a user loads it, its context *declared* 2048 (it was trained on 8k; a 2k declaration keeps the test
    to 8,192 tokens, which 2 CPU cores stream in well under a minute): a fact planted at 30% of a context 4x that
    long is answered through a cache of 512 slots (+ one 256-token segment < 2,048 positions)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from symphony.corpus import builtin_text
    from symphony.haystack import build_haystack, contains_answer, random_needle

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model.config.max_position_embeddings = 2048
    needle = random_needle(random.Random(3))
    context = tok.decode(build_haystack(tok, builtin_text(), 4 * 2048, 0.3, [needle]))
    pipe = pipeline("symphony-text-generation", model=model, tokenizer=tok, device=-1, cache_slots=512)
    out = pipe(context, question=needle.question, max_new_tokens=16)
    assert out["tokens_seen"] > 4 * 2048
    assert out["cache_bytes"] == 512 * kv_bytes_per_token(model.config, 4)
    assert contains_answer(out["answer"], needle.value), out
