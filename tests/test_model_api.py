"""SymphonyModel: the three-memory forward API (logits, per-token surprise, attention over knowledge slots)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from symphony.config import load_config
from symphony.memory.inject import inject
from symphony.memory.persistent import persistent_memory
from symphony.runtime.model import SymphonyModel, SymphonyOutput, knowledge_slot_indices
from symphony.models.compat import with_cache
from symphony.models.tiny import tiny_model

P = 4
BIG = ["cache.ledger=100", "cache.window=140"]  # above every input here; + a 256-token segment fits 512 positions


def ids_for(b, s, seed=0):
    return torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(seed))


def symphony_model(*extra, persistent=0, tasks=1, seed=0):
    cfg = load_config("tiny", ["memory.kind=none", "memory.pointer=false",  # persistent memory only
                               f"memory.persistent_tokens={persistent}", f"memory.num_tasks={tasks}", *extra])
    model = tiny_model("tiny-llama", seed=seed)
    inject(model, cfg.memory)
    return SymphonyModel(model, None, cfg.cache, cfg.salience), model, cfg


@torch.no_grad()
def hf_segment_logits(model, ids, seg):
    cache, out = DynamicCache(config=model.config), []
    for s in range(0, ids.numel(), seg):
        out.append(model(**with_cache(model, cache, input_ids=ids[None, s:s + seg], use_cache=True)).logits[0])
    return torch.cat(out)


def test_flags_off_logits_are_the_base_models():
    sm, model, cfg = symphony_model(*BIG)
    ids = ids_for(2, 150)
    out = sm(ids)
    for b in range(2):  # fed in segments of cache.segment_len, bit for bit the base model fed the same way
        assert torch.equal(out.logits[b], hf_segment_logits(model, ids[b], cfg.cache.segment_len))
    one, _, _ = symphony_model(*BIG, "cache.segment_len=256")
    with torch.no_grad():  # one segment: the base model's full-sequence forward exactly
        assert torch.equal(one(ids).logits, model(input_ids=ids).logits)


def test_outputs_have_the_documented_shapes_and_meaning():
    sm, model, cfg = symphony_model("cache.sinks=2", "cache.ledger=16", "cache.window=32", "cache.segment_len=16",
                                    "cache.span_len=4", persistent=P, tasks=2)
    assert sm.knowledge_slots == P + 16 and sm.num_tasks == 2
    b, s = 3, 120
    ids = ids_for(b, s)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, :20] = 0  # left padding
    mask[2, 100:] = 0  # right padding
    out = sm(ids, attention_mask=mask, task_ids=torch.tensor([0, 1, 1]))
    assert isinstance(out, SymphonyOutput)
    logits, surprise, knowledge = out  # unpacks like the seed's (logits, surprise_scores, knowledge_attention)
    assert logits.shape == (b, s, 512) and logits.dtype == torch.float32
    assert surprise.shape == (b, s) and surprise.dtype == torch.float32
    assert knowledge.shape == (b, s, P + 16) and knowledge.dtype == torch.float32
    pad = mask == 0
    assert (logits[pad] == 0).all() and (surprise[pad] == 0).all() and (knowledge[pad] == 0).all()
    # surprise: -log p(token | prefix) under the returned logits, 0 for each row's first token
    for row in range(b):
        where = torch.nonzero(mask[row])[:, 0]
        lg, tok = logits[row, where], ids[row, where]
        ref = -torch.log_softmax(lg[:-1], -1).gather(-1, tok[1:, None])[:, 0]
        assert surprise[row, where[0]] == 0 and torch.allclose(surprise[row, where[1:]], ref, atol=1e-5)
    # rows are probabilities over part of the slots: in [0, 1], and the ledger columns fill once it is in use
    sums = knowledge.sum(-1)
    assert (knowledge >= 0).all() and (sums <= 1 + 1e-5).all() and (sums[~pad] > 0).all()
    assert knowledge[0, -1, P:].sum() > 0 and (knowledge[0, :20, P:] == 0).all()  # empty ledger at the start
    # padding is skipped: a padded row equals the same tokens unpadded (its own stream)
    alone = sm(ids[1:2, 20:], task_ids=[1])
    assert torch.equal(alone.logits[0], logits[1, 20:]) and torch.equal(alone.knowledge_attention[0], knowledge[1, 20:])
    # the task selects the persistent tokens
    other = sm(ids[1:2, 20:], task_ids=[0])
    assert not torch.equal(other.logits, alone.logits)


def test_knowledge_attention_is_the_last_layers_attention():
    """Against the model's own eager attention probabilities (output_attentions) over the same prefix + ids."""
    sm, model, cfg = symphony_model(*BIG, persistent=P, tasks=2)
    ids = ids_for(1, 100)  # two segments of 64: the second attends to the first through the cache
    out = sm(ids, task_ids=[1])
    model.set_attn_implementation("eager")
    with torch.no_grad():
        emb = torch.cat([persistent_memory(model)(1), model.get_input_embeddings()(ids[0])])[None]
        att = model(inputs_embeds=emb, output_attentions=True).attentions[-1][0].mean(0)  # [P+S, P+S]
    assert torch.allclose(out.knowledge_attention[0, :, :P], att[P:, :P], atol=1e-5)
    assert (out.knowledge_attention[0, :, P:] == 0).all()  # a big budget: nothing has left the window


def test_rows_sum_to_one_over_all_slots_and_at_most_one_over_knowledge():
    sm, model, cfg = symphony_model("cache.sinks=2", "cache.ledger=8", "cache.window=16", "cache.segment_len=8",
                                    "cache.span_len=4", persistent=P)
    eng = sm.engine
    stream = eng.new_stream()
    ids = ids_for(1, 80)[0]
    k = sm.knowledge_slots
    for start in range(0, 80, 8):
        before = stream.occupied
        with torch.no_grad(), sm._probe(k) as probe:
            eng.forward(stream, ids[start:start + 8])
        probs = probe.probs(stream.cache, before)  # [q, every slot]
        assert probs.shape == (8, stream.occupied)
        # were every slot a knowledge slot, the rows would sum to 1
        assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-5)
        cols = knowledge_slot_indices(stream, before)
        assert cols[:P].tolist() == list(range(P)) and cols.numel() <= k
        assert (probs[:, cols].sum(-1) <= 1 + 1e-5).all()
        # the segment's own tokens attend causally: nothing on later slots
        assert (probs[0, before + 1:] == 0).all()
        eng.compact(stream)
    assert stream.cache.compactions > 0 and knowledge_slot_indices(stream, stream.occupied).numel() == P + 8


def test_position_ids_task_ids_and_baselines():
    sm, model, cfg = symphony_model(*BIG, persistent=P, tasks=2)
    ids = ids_for(2, 30)
    ref = sm(ids)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF users pass with left padding: accepted
    assert torch.equal(sm(ids, mask, pos).logits[0], ref.logits[0])
    assert torch.equal(sm(ids, position_ids=torch.arange(100, 130)).logits, ref.logits)  # the start is ignored
    with pytest.raises(ValueError, match="position_ids must increase by 1"):
        sm(ids, position_ids=torch.arange(30).flip(0))
    with pytest.raises(ValueError, match="one task per batch row"):
        sm(ids, task_ids=[0, 1, 1])
    from symphony.errors import SymphonyError

    with pytest.raises(SymphonyError, match="out of range"):
        sm(ids, task_ids=[0, 2])
    assert torch.equal(sm(ids, task_ids=0).logits, ref.logits)
    empty = sm(ids, attention_mask=torch.zeros(2, 30))  # nothing but padding: zeros
    assert empty.logits.shape == (2, 30, 512) and not empty.logits.any()
    sinks = SymphonyModel(model, None, cfg.cache, cfg.salience, policy="sinks")
    out = sinks(ids)  # the baselines have no knowledge slots (and no persistent memory)
    assert sinks.knowledge_slots == 0 and out.knowledge_attention.shape == (2, 30, 0)


def test_from_config_and_module_behaviour(tmp_path):
    from symphony.memory.checkpoint import save_adapters

    sm, model, cfg = symphony_model(persistent=P, tasks=3)
    save_adapters(model, tmp_path / "run" / "final", {"config": cfg.to_dict()})
    loaded = SymphonyModel.from_config(load_config("tiny", [f"memory.checkpoint={tmp_path / 'run'}"]))
    assert loaded.num_tasks == 3 and loaded.knowledge_slots == P + loaded.engine.cache_cfg.ledger
    names = dict(loaded.named_parameters())
    assert "model.symphony_persistent.embeddings" in names  # the wrapped model is a registered submodule
    ids = ids_for(1, 40)
    assert torch.equal(loaded(ids, task_ids=[2]).logits, sm(ids, task_ids=[2]).logits)
    assert dataclasses.is_dataclass(loaded.engine.cache_cfg)
