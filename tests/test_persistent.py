"""Persistent memory (learned task tokens in fixed first cache slots) and manifold-paging page-switch reports."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from symphony.config import load_config
from symphony.runtime.chat import ChatSession
from symphony.runtime.engine import StreamingEngine, engine_from_config
from symphony.errors import SymphonyError
from symphony.memory.checkpoint import load_checkpoint, save_adapters
from symphony.memory.inject import adapter_state_dict, inject, memory_adapters
from symphony.memory.persistent import PersistentMemory, persistent_memory
from symphony.models.tiny import tiny_model
from helpers import SMALL, engine, ids_for, segment_logits

P = 4


def injected(*extra, gate=None):
    cfg = load_config("tiny", ["memory.kind=none", "memory.pointer=false", *SMALL, *extra])  # persistent memory only
    model = tiny_model("tiny-llama", seed=0)
    inject(model, cfg.memory)
    if gate is not None:
        with torch.no_grad():
            for a in memory_adapters(model):
                a.gate.fill_(gate)
    return cfg, model


def test_flags_off_is_bit_equal_to_the_model_without_persistent_memory():
    base_cfg = load_config("tiny", SMALL)
    base = engine(tiny_model("tiny-llama", seed=0), base_cfg, sinks=2, ledger=16, window=32, segment_len=16)
    for extra in ([], ["memory.persistent_tokens=0", "memory.num_tasks=3"]):
        cfg, model = injected(*extra)
        assert persistent_memory(model) is None and adapter_state_dict(model) == {}
        eng = engine(model, cfg, sinks=2, ledger=16, window=32, segment_len=16)
        assert eng.capacity == base.capacity == 50 and eng.persistent_tokens == 0
        s, b = eng.new_stream(), base.new_stream()
        assert s.persistent == 0 and s.occupied == 0
        ids = ids_for(200)
        assert torch.equal(segment_logits(eng, s, ids), segment_logits(base, b, ids))
        assert torch.equal(s.cache.positions, b.cache.positions)
        assert eng.decode(s, 5, stop_ids=[]) == base.decode(b, 5, stop_ids=[])


def test_persistent_slots_are_never_evicted_and_never_move():
    cfg, model = injected("memory.kind=titans", f"memory.persistent_tokens={P}", "memory.num_tasks=2", gate=1.0)
    eng = engine(model, cfg, sinks=2, ledger=8, window=16, segment_len=8, span_len=4)
    assert eng.persistent_tokens == P and eng.capacity == 2 + 8 + 16 + P
    stream = eng.new_stream(task_id=1)
    assert stream.persistent == P and stream.task_id == 1 and stream.occupied == P
    assert stream.tokens_seen == 0 and stream.last_logits is None  # a fresh stream, its prefix apart
    cache = stream.cache
    assert cache.token_ids.tolist() == [-1] * P and cache.positions.tolist() == list(range(-P, 0))
    keys = [layer.keys[..., :P, :].clone() for layer in cache.layers]
    values = [layer.values[..., :P, :].clone() for layer in cache.layers]
    keeps = []
    ids = ids_for(400)
    for start in range(0, 400, 8):
        eng.feed(stream, ids[start:start + 8])
        eng.compact(stream)
        if cache.last_keep is not None and cache.compactions > len(keeps):
            keeps.append(cache.last_keep.clone())
        for layer, k, v in zip(cache.layers, keys, values):  # same slots, same keys and values, every time
            assert torch.equal(layer.keys[..., :P, :], k) and torch.equal(layer.values[..., :P, :], v)
        assert cache.token_ids[:P].tolist() == [-1] * P and cache.positions[:P].tolist() == list(range(-P, 0))
    assert len(keeps) > 40  # many compactions...
    for keep in keeps:  # ...and the persistent slots (then the real sinks) were kept at their own index each time
        assert keep[:P + 2].tolist() == list(range(P + 2))
    assert stream.occupied == eng.capacity and stream.tokens_seen == 400
    assert cache.positions[P:P + 2].tolist() == [0, 1]  # the real sinks: the stream's first tokens
    # the Titans adapters stored evicted tokens only: their pending rows stay aligned with the cache's slots
    assert all(pending.shape[1] == stream.occupied for _, pending in stream.memory)


def test_task_ids_select_the_persistent_tokens():
    cfg, model = injected(f"memory.persistent_tokens={P}", "memory.num_tasks=3")
    pm = persistent_memory(model)
    assert isinstance(pm, PersistentMemory) and tuple(pm.embeddings.shape) == (3, P, 64)
    assert pm.embeddings.requires_grad and not any(p.requires_grad for n, p in model.named_parameters()
                                                    if not n.startswith("symphony_persistent."))
    eng = engine(model, cfg)
    ids = ids_for(100)
    logits = {t: segment_logits(eng, eng.new_stream(task_id=t), ids) for t in (0, 1, 2)}
    assert torch.equal(logits[1], segment_logits(eng, eng.new_stream(task_id=1), ids))  # deterministic
    assert not torch.equal(logits[0], logits[1]) and not torch.equal(logits[1], logits[2])
    with torch.no_grad():  # the logits follow the embeddings: same embeddings, same logits
        pm.embeddings[2] = pm.embeddings[0]
    assert torch.equal(segment_logits(eng, eng.new_stream(task_id=2), ids), logits[0])
    with pytest.raises(SymphonyError, match="out of range"):
        eng.new_stream(task_id=3)
    # the baselines run the bare base model: no persistent slots
    sinks = engine(model, cfg, policy="sinks")
    assert sinks.new_stream(task_id=2).occupied == 0 and sinks.capacity == cfg.cache.sinks + cfg.cache.ledger + \
        cfg.cache.window
    bare = engine(tiny_model("tiny-llama", seed=0), cfg)
    with pytest.raises(SymphonyError, match="no.* persistent memory|persistent memory"):
        bare.new_stream(task_id=1)


def test_inject_is_seeded_and_checkpoints_carry_the_persistent_tokens(tmp_path):
    cfg, model = injected("memory.kind=fhrr", f"memory.persistent_tokens={P}", "memory.num_tasks=2")
    _, again = injected("memory.kind=fhrr", f"memory.persistent_tokens={P}", "memory.num_tasks=2")
    assert torch.equal(persistent_memory(model).embeddings, persistent_memory(again).embeddings)
    table = model.get_input_embeddings().weight
    rows = persistent_memory(model).embeddings.reshape(-1, 64)
    assert all(any(torch.equal(r, t) for t in table) for r in rows)  # copies of real token embeddings
    with torch.no_grad():
        persistent_memory(model).embeddings.add_(1.0)
    assert "symphony_persistent.embeddings" in adapter_state_dict(model)
    save_adapters(model, tmp_path / "run" / "final", {"config": cfg.to_dict()})
    fresh = tiny_model("tiny-llama", seed=0)
    load_checkpoint(fresh, tmp_path / "run")
    assert torch.equal(persistent_memory(fresh).embeddings, persistent_memory(model).embeddings)
    eng = engine_from_config(load_config("tiny", [f"memory.checkpoint={tmp_path / 'run'}"]), progress=False)
    assert eng.persistent_tokens == P and eng.num_tasks == 2
    # strict keys: a checkpoint without persistent tokens does not load into a model that has them
    cfg0, model0 = injected("memory.kind=fhrr")
    save_adapters(model0, tmp_path / "plain", {"config": cfg0.to_dict()})
    from symphony.memory.checkpoint import load_adapters

    with pytest.raises(SymphonyError, match="missing keys: symphony_persistent.embeddings"):
        load_adapters(model, tmp_path / "plain")


def test_config_validates_the_persistent_fields():
    with pytest.raises(SymphonyError, match="memory.persistent_tokens"):
        load_config("tiny", ["memory.persistent_tokens=-1"])
    with pytest.raises(SymphonyError, match="memory.num_tasks"):
        load_config("tiny", ["memory.num_tasks=0"])


def test_phase7_alone_trains_the_persistent_tokens():
    from symphony.pipeline.train import _trainable

    for phase in (4, 5, 6, 7):  # a fresh model per phase, as each phase run loads one
        _, model = injected("memory.kind=fhrr", "memory.pointer=true", f"memory.persistent_tokens={P}")
        pm = persistent_memory(model).embeddings
        chosen = _trainable(model, phase)
        assert any(p is pm for p in chosen) == (phase == 7)
        assert pm.requires_grad == (phase == 7)
        assert chosen  # the other parts still train in their phases


def test_gradients_reach_the_persistent_tokens_through_every_truncated_window():
    cfg, model = injected("memory.kind=fhrr", f"memory.persistent_tokens={P}", gate=1.0)
    eng = engine(model, cfg, sinks=2, ledger=8, window=16, segment_len=8, span_len=4)
    eng.grad_enabled = True
    pm = persistent_memory(model).embeddings
    stream = eng.new_stream()
    ids = ids_for(80)
    for start in range(0, 48, 8):  # several segments and compactions, then a cut (as the trainer does)
        eng.forward(stream, ids[start:start + 8])
        eng.compact(stream)
    before = [layer.keys[..., :P, :].detach().clone() for layer in stream.cache.layers]
    eng.truncate_graph(stream)
    for layer, k in zip(stream.cache.layers, before):  # recomputed with a graph: the very same values
        assert torch.equal(layer.keys[..., :P, :], k) and layer.keys.requires_grad
    out = eng.forward(stream, ids[48:56])
    out.logits.float().logsumexp(-1).sum().backward()  # a loss on a segment after the cut
    assert pm.grad is not None and pm.grad.abs().sum() > 0


def test_page_switches_are_reported_per_layer():
    paged = ["memory.kind=titans", "memory.titans.pages=2", "memory.titans.page_threshold=0.0"]
    cfg, model = injected(*paged, gate=1.0)
    eng = engine(model, cfg, sinks=2, ledger=8, window=16, segment_len=16, span_len=4)
    stream = eng.new_stream()
    assert stream.page_switches() == {0: 0, 1: 0}  # layers of the default `last:2` spec, nothing written yet
    eng.ingest(stream, ids_for(200))
    switches = stream.page_switches()
    assert set(switches) == {0, 1} and all(n > 0 for n in switches.values())
    from symphony.memory.titans import page_switches

    i = 0  # the total over the layer's heads
    assert switches[memory_adapters(model)[i].layer_idx] == int(page_switches(stream.memory[i][0]).sum())
    # without paging: nothing to report, and the chat status does not mention it
    plain_cfg, plain = injected("memory.kind=titans", gate=1.0)
    plain_eng = engine(plain, plain_cfg, sinks=2, ledger=8, window=16, segment_len=16)
    s = plain_eng.new_stream()
    plain_eng.ingest(s, ids_for(200))
    assert s.page_switches() == {}


def test_chat_status_and_cli_report_page_switches_and_task_id_errors(tiny_loaded, tmp_path):
    from symphony.cli.main import _status_line, main

    paged = ["memory.kind=titans", "memory.titans.pages=2", "memory.titans.page_threshold=0.0"]
    cfg, model = injected(*paged, gate=1.0)
    session = ChatSession(StreamingEngine(model, tiny_loaded.tokenizer, dataclasses.replace(
        cfg.cache, sinks=2, ledger=8, window=16, segment_len=16), cfg.salience))
    session.say("tell me about streams. " * 10, max_new_tokens=4)
    st = session.status()
    assert set(st["page_switches"]) == {0, 1} and "page switches L0:" in _status_line(session)
    assert "page_switches" not in ChatSession(StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer,
                                                              cfg.cache, cfg.salience)).status()

    invoke = lambda *a, **k: CliRunner().invoke(main, [str(x) for x in a], **k)  # noqa: E731
    r = invoke("chat", "-c", "tiny", "--task-id", 1, input="hello\n")
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "persistent memory" in r.output, r.output
    cfg, model = injected("memory.kind=fhrr", f"memory.persistent_tokens={P}", "memory.num_tasks=2")
    save_adapters(model, tmp_path / "run" / "final", {"config": cfg.to_dict()})
    doc = tmp_path / "doc.txt"
    doc.write_text("a short document. " * 20)
    r = invoke("generate", "-c", "tiny", "--checkpoint", tmp_path / "run", "--file", doc, "-p", "what?",
               "--task-id", 2, "--max-new-tokens", 2)
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "out of range" in r.output, r.output
    r = invoke("chat", "-c", "tiny", "--checkpoint", tmp_path / "run", "--task-id", 1, "--max-new-tokens", 2,
               input="hello\n")
    assert r.exit_code == 0, r.output
    assert "assistant>" in r.output and "tokens seen" in r.output
