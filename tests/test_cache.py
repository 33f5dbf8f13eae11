"""BoundedCache and the streaming engine on tiny random models: exactness against the HF baseline,
constant memory, positions in range, exact RoPE re-rotation, span-level compaction, salience pieces."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from symphony.runtime.cache import BoundedCache, RopeRotator, cache_nbytes
from symphony.config import SalienceConfig, load_config
from symphony.runtime.engine import StreamingEngine
from symphony.models.info import kv_bytes_per_token
from symphony.models.compat import with_cache
from symphony.models.tiny import TINY_MODELS, byte_tokenizer, tiny_config, tiny_model
from symphony.runtime.salience import NoveltyTable, RarityOracle, surprisal


def random_ids(n: int, seed: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def llama():
    """Read-only tiny Llama shared by the tests of this module (tests that hook it use their own)."""
    return tiny_model("tiny-llama")


def engine(model, tokenizer, policy: str, **cache_overrides) -> StreamingEngine:
    cfg = load_config("tiny")
    return StreamingEngine(model, tokenizer, dataclasses.replace(cfg.cache, **cache_overrides), cfg.salience,
                           policy=policy)


# --- 1. BoundedCache inside model.generate is the DynamicCache baseline, bit for bit -------------------------

@pytest.mark.parametrize("name", TINY_MODELS)
def test_generate_with_bounded_cache_is_bit_equal_to_dynamic_cache(name):
    model = tiny_model(name)
    ids = random_ids(48, seed=1)[None]
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, min_new_tokens=24)
    bounded = BoundedCache.for_model(model, 4, 10000, 10000)
    assert bounded.rope is not None
    out_bounded = model.generate(ids, **with_cache(model, bounded, **kw))
    out_dynamic = model.generate(ids, **with_cache(model, DynamicCache(config=model.config), **kw))
    assert out_bounded.shape == (1, 48 + 24)
    assert torch.equal(out_bounded, out_dynamic)
    # the cache saw every token and never compacted (generate does not call compact)
    assert bounded.compactions == 0
    assert bounded.occupied() == bounded.get_seq_length() == 48 + 24 - 1
    assert torch.equal(bounded.positions, torch.arange(48 + 24 - 1))


# --- 2. The engine with a budget above the input length is the full-cache engine and model.generate --------

@pytest.mark.parametrize("policy", ["symphony", "sinks"])
def test_engine_under_budget_equals_full_cache(llama, tokenizer, policy):
    prompt = random_ids(150, seed=2)  # segment_len 64: segments of 64, 64, 22
    results = {}
    for p in (policy, "full"):
        eng = engine(llama, tokenizer, p, ledger=200, window=200)  # above the input, inside the 512-token context
        stream = eng.new_stream()
        seg_logits: list[torch.Tensor] = []
        eng.ingest(stream, prompt, on_segment=lambda st, chunk, logits: seg_logits.append(logits.clone()))
        tokens = eng.decode(stream, 20, stop_ids=[])
        results[p] = (seg_logits, tokens, stream)
    (bounded_logits, bounded_tokens, bounded_stream), (full_logits, full_tokens, full_stream) = (
        results[policy], results["full"])
    assert isinstance(bounded_stream.cache, BoundedCache) and isinstance(full_stream.cache, DynamicCache)
    assert [x.shape[0] for x in bounded_logits] == [64, 64, 22]
    assert len(bounded_logits) == len(full_logits)
    for a, b in zip(bounded_logits, full_logits):
        assert torch.equal(a, b)
    assert len(bounded_tokens) == 20
    assert bounded_tokens == full_tokens
    assert bounded_stream.cache.compactions == 0
    assert bounded_stream.occupied == full_stream.occupied == 150 + 20

    generated = llama.generate(prompt[None], attention_mask=torch.ones(1, 150, dtype=torch.long), do_sample=False,
                               max_new_tokens=20, min_new_tokens=20)
    assert generated[0, 150:].tolist() == full_tokens


# --- 3. Constant memory --------------------------------------------------------------------------------------

def test_cache_bytes_are_constant_at_any_length(llama, tokenizer):
    eng = engine(llama, tokenizer, "symphony")
    capacity = eng.capacity
    assert capacity == 4 + 64 + 128
    stream = eng.new_stream()
    eng.ingest(stream, random_ids(2_000, seed=3, high=512))
    bytes_2k, occupied_2k = stream.nbytes(), stream.occupied
    eng.ingest(stream, random_ids(48_000, seed=4, high=512))
    assert stream.tokens_seen == 50_000
    assert occupied_2k == stream.occupied == capacity
    assert bytes_2k == stream.nbytes() == capacity * kv_bytes_per_token(llama.config, 4)
    assert cache_nbytes(stream.cache) == stream.nbytes()
    assert int(stream.cache.positions.max()) == 49_999  # the window holds the newest tokens
    assert stream.cache.regions() == {"sinks": 4, "ledger": 64, "window": 128}


# --- 4. RoPE positions never exceed the model's context window ----------------------------------------------

@pytest.mark.parametrize("policy", ["symphony", "sinks"])
def test_positions_stay_below_max_position_embeddings(tokenizer, policy):
    model = tiny_model("tiny-llama")  # own copy: it gets a hook
    limit = model.config.max_position_embeddings
    seen: list[int] = []

    def record(module, args, kwargs):
        position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        seen.append(int(position_ids.max()))

    handle = model.model.rotary_emb.register_forward_pre_hook(record, with_kwargs=True)
    try:
        eng = engine(model, tokenizer, policy)
        stream = eng.new_stream()
        eng.ingest(stream, random_ids(4 * limit + 37, seed=5, high=512))
        n_ingest = len(seen)
        out = eng.decode(stream, 100, stop_ids=[])
    finally:
        handle.remove()
    assert len(out) == 100
    assert n_ingest == -(-(4 * limit + 37) // eng.cache_cfg.segment_len) and len(seen) == n_ingest + 100
    assert stream.tokens_seen == 4 * limit + 37 + 100
    assert max(seen) < limit
    # the largest position is the last slot of a full cache plus one segment
    assert max(seen) == eng.capacity + eng.cache_cfg.segment_len - 1


# --- 5. RoPE re-rotation is exact ---------------------------------------------------------------------------

def one_layer_llama(seed: int = 0):
    config = tiny_config("tiny-llama")
    config.num_hidden_layers = 1
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


def test_compacted_cache_equals_fresh_prefill_of_kept_tokens(tokenizer):
    """Layer-0 keys/values depend only on the token and its position, so after eviction + re-rotation the
    cache must hold exactly what a fresh prefill of the kept tokens (at positions 0..N-1) computes."""
    model = one_layer_llama()
    eng = engine(model, tokenizer, "symphony")
    stream = eng.new_stream()
    eng.ingest(stream, random_ids(700, seed=6, high=512))
    cache = stream.cache
    assert cache.compactions > 0 and cache.occupied() == cache.capacity
    positions = cache.positions
    assert not torch.equal(positions, torch.arange(len(positions)))  # middle tokens were evicted...
    assert bool((positions[1:] > positions[:-1]).all())  # ...and the survivors are in stream order
    assert bool((cache.token_ids >= 0).all())

    fresh = DynamicCache(config=model.config)
    with torch.no_grad():
        model(**with_cache(model, fresh, input_ids=cache.token_ids[None], use_cache=True))
    torch.testing.assert_close(cache.layers[0].keys, fresh.layers[0].keys, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache.layers[0].values, fresh.layers[0].values, rtol=0, atol=1e-5)


def test_rope_rotator_shift_equals_rotation_at_shifted_position(llama):
    rotary = llama.model.rotary_emb
    rotator = RopeRotator.from_model(llama)
    assert rotator is not None and rotator.rotary_dim == 16  # head_dim 64 / 4 heads
    g = torch.Generator().manual_seed(7)
    raw = torch.randn(1, 2, 6, 16, generator=g)
    p = torch.tensor([0, 5, 17, 100, 300, 511])
    d = torch.tensor([3, -5, 0, -90, 11, -500])

    def rotate(positions):
        cos, sin = rotary(raw, position_ids=positions[None])
        return apply_rotary_pos_emb(raw, raw, cos, sin)[1]

    torch.testing.assert_close(rotator.shift(rotate(p), d), rotate(p + d), rtol=0, atol=1e-5)
    # composition: two shifts are one shift by the sum; a zero shift is the identity
    torch.testing.assert_close(rotator.shift(rotator.shift(rotate(p), d), -d), rotate(p), rtol=0, atol=1e-5)
    keys = rotate(p)
    assert rotator.shift(keys, torch.zeros(6, dtype=torch.long)) is keys


def test_rope_rotator_partial_rotary_dims_leave_the_rest_alone():
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))  # rotary_dim 8 of head_dim 12
    rotator = RopeRotator(inv_freq)
    assert rotator.rotary_dim == 8
    keys = torch.randn(1, 1, 3, 12, generator=torch.Generator().manual_seed(8))
    delta = torch.tensor([1, 2, 3])
    out = rotator.shift(keys, delta)
    assert torch.equal(out[..., 8:], keys[..., 8:])
    torch.testing.assert_close(out[..., :8], rotator.shift(keys[..., :8].contiguous(), delta))
    assert not torch.allclose(out[..., :8], keys[..., :8])


# --- 6. Compaction keeps sinks + the best whole spans + the window ------------------------------------------

def fill(cache: BoundedCache, n: int, salience: torch.Tensor, chunk: int = 8, heads: int = 2, dim: int = 4,
         seed: int = 0, start: int = 0):
    """Append n slots in chunks (every layer, then `record`) as a forward pass would; returns the K/V fed."""
    g = torch.Generator().manual_seed(seed)
    layers = len(cache.layers)
    keys = [torch.randn(1, heads, n, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(1, heads, n, dim, generator=g) for _ in range(layers)]
    for s in range(0, n, chunk):
        for layer in range(layers):
            cache.update(keys[layer][..., s:s + chunk, :], values[layer][..., s:s + chunk, :], layer)
        cache.record(torch.arange(start + s, start + min(s + chunk, n)) + 1000, salience[s:s + chunk])
    return keys, values


def test_compaction_keeps_sinks_best_spans_and_window():
    cache = BoundedCache(num_layers=3, sinks=2, ledger=8, window=8, span_len=4, smooth_radius=0)
    sal = torch.full((40,), 0.1)
    sal[8:12] = 5.0  # span 2: best
    sal[24:28] = 3.0  # span 6: second
    sal[16:20] = 1.0  # span 4: third, no room
    sal[13] = 2.9  # one salient token does not outweigh a whole salient span (span score = mean)
    keys, values = fill(cache, 40, sal)
    assert cache.occupied() == 40 and cache.regions() == {"sinks": 2, "ledger": 30, "window": 8}
    assert cache.compact() == 40 - 18
    expected = torch.tensor([0, 1, *range(8, 12), *range(24, 28), *range(32, 40)])
    assert torch.equal(cache.positions, expected)
    assert torch.equal(cache.token_ids, expected + 1000)
    assert torch.equal(cache.salience, sal[expected])
    for layer in range(3):  # no rope: the selected slots are copied unchanged, in stream order
        assert torch.equal(cache.layers[layer].keys, keys[layer][..., expected, :])
        assert torch.equal(cache.layers[layer].values, values[layer][..., expected, :])
    assert cache.get_seq_length() == cache.occupied() == cache.capacity == 18
    assert cache.regions() == {"sinks": 2, "ledger": 8, "window": 8}
    assert cache.compactions == 1 and cache.nbytes() == 3 * 2 * 18 * 2 * 4 * 4


def test_compaction_evicts_lowest_salience_spans_first():
    """Several compaction rounds against a reference: each time, the ledger holds the top-scoring whole
    spans among everything that left the window, and only lower-scoring spans were ever evicted."""
    span, sinks, ledger, window, chunk = 4, 4, 12, 8, 8
    cache = BoundedCache(num_layers=2, sinks=sinks, ledger=ledger, window=window, span_len=span, smooth_radius=0)
    g = torch.Generator().manual_seed(9)
    span_scores: dict[int, float] = {}
    kept_ref: list[int] = []  # positions held; sinks are span 0 exactly (sinks == span_len)
    evicted_scores: list[float] = []
    total = 0
    for rnd in range(12):
        n = chunk * (3 if rnd == 0 else 1)
        scores = torch.rand(n // span, generator=g) * 10
        sal = scores.repeat_interleave(span)
        for i, s in enumerate(scores.tolist()):
            span_scores[(total // span) + i] = s
        fill(cache, n, sal, chunk=chunk, seed=rnd, start=total)
        new = list(range(total, total + n))
        total += n
        # reference: sinks | best whole spans of the middle | window
        occupied = kept_ref + new
        if len(occupied) > sinks + ledger + window:
            win = occupied[-window:]
            middle_spans = sorted({p // span for p in occupied[sinks:-window]})
            best = sorted(middle_spans, key=lambda s: (-span_scores[s], -s))[: ledger // span]
            for s in middle_spans:
                if s not in best:
                    evicted_scores.append(span_scores[s])
                    assert span_scores[s] <= min(span_scores[b] for b in best)
            kept_ref = occupied[:sinks] + [p for p in occupied[sinks:-window] if p // span in best] + win
        else:
            kept_ref = occupied
        evicted = cache.compact()
        assert evicted == len(occupied) - len(kept_ref)
        assert cache.positions.tolist() == kept_ref
        assert torch.equal(cache.token_ids, cache.positions + 1000)
        assert sum(cache.regions().values()) == cache.occupied()
        ledger_positions = cache.positions[sinks:-window]
        assert len(ledger_positions) % span == 0 and bool((ledger_positions[::span] % span == 0).all())
    assert cache.compactions > 5 and evicted_scores


def test_salient_token_keeps_its_whole_span_with_smoothing():
    cache = BoundedCache(num_layers=1, sinks=4, ledger=4, window=8, span_len=4, smooth_radius=4)
    sal = torch.zeros(48)
    sal[21] = 10.0  # lends its score to 17..25: span 5 (20..23) is fully covered, its neighbours partly
    fill(cache, 48, sal)
    cache.compact()
    assert cache.positions.tolist() == [0, 1, 2, 3, 20, 21, 22, 23, *range(40, 48)]
    assert cache.salience[5] == 10.0  # stored scores are the raw ones, not the smoothed ones


def test_compact_is_a_noop_at_or_under_capacity():
    cache = BoundedCache(num_layers=2, sinks=2, ledger=8, window=8, span_len=4)
    assert cache.compact() == 0 and cache.occupied() == 0 and cache.nbytes() == 0
    assert cache.regions() == {"sinks": 0, "ledger": 0, "window": 0}
    occupied = 0
    for add in (1, 2, 7, 8):  # 1, 3, 10, 18 == capacity
        fill(cache, add, torch.rand(add), seed=add, start=occupied)
        occupied += add
        assert cache.occupied() == occupied
        before = [(layer.keys, layer.values) for layer in cache.layers]
        positions, token_ids, salience = cache.positions, cache.token_ids.clone(), cache.salience.clone()
        assert cache.compact() == 0
        assert cache.compactions == 0 and cache.occupied() == occupied
        assert all(layer.keys is k and layer.values is v for layer, (k, v) in zip(cache.layers, before))
        assert cache.positions is positions and torch.equal(cache.positions, torch.arange(occupied))
        assert torch.equal(cache.token_ids, token_ids) and torch.equal(cache.salience, salience)
        assert torch.equal(cache.keep_indices(), torch.arange(occupied))
        regions = cache.regions()
        assert sum(regions.values()) == occupied and regions["sinks"] == min(2, occupied)
    assert cache.occupied() == cache.capacity
    assert cache.regions() == {"sinks": 2, "ledger": 8, "window": 8}


def test_sinks_only_budget_keeps_first_and_last_tokens():
    cache = BoundedCache(num_layers=1, sinks=4, ledger=0, window=12, span_len=4)
    fill(cache, 40, torch.rand(40))
    assert cache.compact() == 24
    assert cache.positions.tolist() == [0, 1, 2, 3, *range(28, 40)]
    assert cache.regions() == {"sinks": 4, "ledger": 0, "window": 12}


# --- 7. Salience pieces -------------------------------------------------------------------------------------

def test_novelty_first_occurrence_only_within_and_across_segments():
    table = NoveltyTable(ngram=3, bits=20)
    # trigram (5,6,7) repeats inside the segment: only its first occurrence is novel
    assert table(torch.tensor([5, 6, 7, 8, 5, 6, 7, 9])).tolist() == [1, 1, 1, 1, 1, 1, 0, 1]
    # across segments: (7,9,5) and (9,5,6) are new, (5,6,7) and (6,7,8) were seen in the previous segment
    assert table(torch.tensor([5, 6, 7, 8])).tolist() == [1, 1, 0, 0]
    # an n-gram split over segments shorter than n-1 is still recognised
    assert table(torch.tensor([100, 101, 102])).tolist() == [1, 1, 1]
    assert table(torch.tensor([100])).tolist() == [1]  # (101,102,100) is new
    assert table(torch.tensor([101])).tolist() == [1]  # (102,100,101) is new
    assert table(torch.tensor([102])).tolist() == [0]  # (100,101,102), spread over 3 segments, was seen
    assert table(torch.tensor([], dtype=torch.long)).tolist() == []
    assert table(torch.tensor([103, 103, 103, 103])).tolist() == [1, 1, 1, 0]


def test_novelty_unigrams_and_a_fresh_table():
    table = NoveltyTable(ngram=1, bits=16)
    assert table(torch.tensor([3, 3, 4, 3])).tolist() == [1, 0, 1, 0]
    assert table(torch.tensor([4, 5])).tolist() == [0, 1]
    assert NoveltyTable(ngram=1, bits=16)(torch.tensor([3, 4])).tolist() == [1, 1]


def test_surprisal_is_negative_log_softmax_of_the_next_token():
    g = torch.Generator().manual_seed(10)
    q, vocab = 7, 50
    ids = torch.randint(0, vocab, (q,), generator=g)
    logits = torch.randn(q, vocab, generator=g) * 3
    prev = torch.randn(vocab, generator=g) * 3
    expected = torch.empty(q)
    expected[0] = -torch.log_softmax(prev, -1)[ids[0]]
    for t in range(1, q):
        expected[t] = -torch.log_softmax(logits[t - 1], -1)[ids[t]]
    torch.testing.assert_close(surprisal(ids, logits, prev), expected)
    no_prev = surprisal(ids, logits, None)
    assert no_prev[0] == 0 and torch.equal(no_prev[1:], surprisal(ids, logits, prev)[1:])
    torch.testing.assert_close(surprisal(ids[:1], logits[:1], prev), expected[:1])
    assert bool((expected > 0).all())


def test_rarity_oracle_combines_surprisal_and_novelty():
    cfg = SalienceConfig(surprisal_weight=1.0, novelty_weight=4.0, ngram=2)
    oracle = RarityOracle(cfg)
    g = torch.Generator().manual_seed(11)
    ids = torch.tensor([1, 2, 1, 2])
    logits = torch.randn(4, 10, generator=g)
    scores = oracle(ids, logits, None, torch.arange(4))
    novelty = torch.tensor([1.0, 1.0, 1.0, 0.0])  # (_,1) (1,2) (2,1) new; second (1,2) repeats
    torch.testing.assert_close(scores, surprisal(ids, logits, None) + 4.0 * novelty)


def test_ledger_fills_exactly_to_capacity_when_spans_do_not_divide_it():
    """sinks=3 and span_len=8 leave partial spans at the window boundary; the ledger still fills to
    its budget, so occupied == capacity (and bytes are identical) after every compaction."""
    from symphony.runtime.cache import BoundedCache

    cache = BoundedCache(num_layers=1, sinks=3, ledger=21, window=10, span_len=8, smooth_radius=0)
    sizes = set()
    for step in range(20):
        q = 7
        k = torch.randn(1, 1, q, 4)
        cache.update(k, k.clone(), 0)
        cache.record(torch.arange(q), torch.rand(q))
        cache.compact()
        if cache.tokens_seen > cache.capacity:
            sizes.add(cache.occupied())
    assert sizes == {cache.capacity}
