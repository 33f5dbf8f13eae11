"""The engine drives the memories: evicted tokens are written into FHRR/Titans, streams keep their own
memory, the baselines run the bare base model, the router feeds the ledger, the copy head joins decoding,
and trained checkpoints load through `memory.checkpoint`."""
from __future__ import annotations

import pytest
import torch

from symphony.config import load_config
from symphony.runtime.engine import engine_from_config
from symphony.errors import SymphonyError
from symphony.memory.checkpoint import find_checkpoint, save_adapters
from symphony.memory.inject import inject, memory_adapters, pointer_heads
from symphony.memory.pointer import RouterScorer
from symphony.models.tiny import tiny_model
from helpers import SMALL, engine, ids_for, segment_logits

# a cache with no sinks and no ledger: once a token leaves the window, only the memory can carry it
WINDOW_ONLY = dict(sinks=0, ledger=0, window=32, segment_len=16, recall_tokens=0)


def injected(kind="fhrr", gate=1.0, *extra):
    cfg = load_config("tiny", [f"memory.kind={kind}", "memory.pointer=false", *SMALL, *extra])
    model = tiny_model("tiny-llama", seed=0)
    inject(model, cfg.memory)
    with torch.no_grad():
        for a in memory_adapters(model):
            a.gate.fill_(gate)
    return cfg, model


@pytest.mark.parametrize("kind", ["fhrr", "titans"])
def test_exactly_the_evicted_inputs_are_written_in_stream_order(kind):
    cfg, model = injected(kind)
    eng = engine(model, cfg, sinks=2, ledger=8, window=16, segment_len=8, span_len=4)
    mlp_in, written = {}, []  # stream position -> the adapter's input row; rows passed to write()
    adapter = memory_adapters(model)[0]
    pos = {"next": 0}

    def grab(_mlp, args):
        x = args[0][0]
        for i in range(x.shape[0]):
            mlp_in[pos["next"] + i] = x[i].float()
    adapter_mlp = model.model.layers[adapter.layer_idx].mlp
    h = adapter_mlp.register_forward_pre_hook(grab)
    real_write = adapter.memory.write
    adapter.memory.write = lambda x, state: (written.append(x[0].clone()), real_write(x, state))[1]

    stream = eng.new_stream()
    ids = ids_for(200)
    evicted_positions = []
    for start in range(0, 200, 8):
        eng.feed(stream, ids[start:start + 8])
        pos["next"] += 8
        before = stream.cache.positions.clone()
        eng.compact(stream)
        gone = before[~torch.isin(before, stream.cache.positions)]
        assert torch.equal(gone, gone.sort().values)  # written in stream order
        evicted_positions.extend(gone.tolist())
        state, pending = stream.memory[0]
        assert pending.shape[1] == stream.occupied  # one pending row per cache slot, always
    h.remove()
    rows = torch.cat(written)
    assert rows.shape[0] == len(evicted_positions) == 200 - stream.occupied
    expect = torch.stack([mlp_in[p] for p in evicted_positions])
    assert torch.equal(rows, expect)
    # memory bytes stay bounded: a fixed state per adapter plus one pending input row per cache slot
    per_row = model.config.hidden_size * 4
    assert stream.memory_nbytes() == sum(a.state_nbytes() + stream.occupied * per_row for a in memory_adapters(model))


@pytest.mark.parametrize("kind", ["fhrr", "titans"])
def test_memory_carries_what_the_cache_evicted(kind):
    """Two streams differ only in a first segment that the window-only cache has long evicted: with the
    gate open their later logits differ (the memory carries it); the same model with adapters off cannot tell."""
    cfg, model = injected(kind)
    a_ids = torch.cat([ids_for(32, seed=1), ids_for(96, seed=3)])
    b_ids = torch.cat([ids_for(32, seed=2), ids_for(96, seed=3)])
    eng = engine(model, cfg, **WINDOW_ONLY)
    la = segment_logits(eng, eng.new_stream(), a_ids)[-16:]
    lb = segment_logits(eng, eng.new_stream(), b_ids)[-16:]
    assert not torch.allclose(la, lb, atol=1e-4)
    base = engine(model, cfg, policy="sinks", sinks=0, ledger=0, window=32, segment_len=16)
    assert torch.equal(segment_logits(base, base.new_stream(), a_ids)[-16:],
                       segment_logits(base, base.new_stream(), b_ids)[-16:])


def test_streams_keep_their_own_memory():
    cfg, model = injected("titans")
    eng = engine(model, cfg, **WINDOW_ONLY)
    x, y = ids_for(64, seed=1), ids_for(64, seed=2)
    a, b = eng.new_stream(), eng.new_stream()
    la1 = segment_logits(eng, a, x)
    assert all(ad.state is None and ad.pending is None for ad in memory_adapters(model))  # nothing left behind
    lb1 = segment_logits(eng, b, x)
    assert torch.equal(la1, lb1)
    la2 = segment_logits(eng, a, y)
    c = eng.new_stream()  # interleaving streams changes nothing
    segment_logits(eng, c, y)
    lb2 = segment_logits(eng, b, y)
    assert torch.equal(la2, lb2)


def test_baselines_run_the_bare_base_model():
    cfg, model = injected("fhrr", 1.0, "memory.pointer=true")
    bare = tiny_model("tiny-llama", seed=0)
    ids = ids_for(150)
    for policy in ("sinks", "full"):
        e1, e2 = engine(model, cfg, policy=policy), engine(bare, cfg, policy=policy)
        s1, s2 = e1.new_stream(), e2.new_stream()
        assert s1.memory is None and not isinstance(s1.scorer, RouterScorer)
        assert torch.equal(segment_logits(e1, s1, ids), segment_logits(e2, s2, ids))
    assert all(a.enabled for a in memory_adapters(model))


def test_zero_gate_symphony_equals_the_base_symphony():
    cfg, model = injected("fhrr", 0.0, "memory.pointer=true")
    bare = tiny_model("tiny-llama", seed=0)
    ids = ids_for(300)
    e1, e2 = engine(model, cfg), engine(bare, cfg)
    s1, s2 = e1.new_stream(), e2.new_stream()
    assert torch.equal(segment_logits(e1, s1, ids), segment_logits(e2, s2, ids))
    assert torch.equal(s1.cache.positions, s2.cache.positions)  # an untrained router does not reorder the ledger
    assert e1.decode(s1, 12, stop_ids=[]) == e2.decode(s2, 12, stop_ids=[])


def test_router_scores_join_the_oracle_in_the_ledger():
    cfg, model = injected("fhrr", 0.0, "memory.pointer=true")
    bare = tiny_model("tiny-llama", seed=0)
    router = pointer_heads(model).router
    with torch.no_grad():
        router.proj.weight.normal_(0, 0.5)
    ids = ids_for(48)
    e1, e2 = engine(model, cfg), engine(bare, cfg)
    s1, s2 = e1.new_stream(), e2.new_stream()
    assert isinstance(s1.scorer, RouterScorer)
    e1.feed(s1, ids)
    e2.feed(s2, ids)
    hidden = model(input_ids=ids[None], output_hidden_states=True).hidden_states[-1][0]
    expect = torch.sigmoid(router(hidden)).detach()
    assert torch.allclose(s1.cache.salience - s2.cache.salience, expect, atol=1e-5)
    assert expect.std() > 0.01  # the router really varies per token


def test_copy_head_joins_decoding():
    cfg, model = injected("fhrr", 0.0, "memory.pointer=true")
    eng = engine(model, cfg)
    token = 200
    doc = torch.cat([ids_for(40), torch.full((24,), token)])
    s = eng.new_stream()
    eng.ingest(s, doc)
    lm_choice = int(torch.argmax(s.last_logits))
    assert lm_choice != token
    head = pointer_heads(model).copy_head
    with torch.no_grad():  # open the gate fully; q = 0 attends uniformly over the cached tokens
        head.gate_scale.fill_(1.0)
        head.gate.bias.fill_(30.0)
        head.q.weight.zero_()
    s = eng.new_stream()
    eng.ingest(s, doc)
    probs = torch.softmax(s.last_logits, -1)
    assert int(torch.argmax(probs)) == token and probs[token] > 0.3
    assert set(torch.nonzero(probs > 1e-6)[:, 0].tolist()) <= set(doc.tolist())  # only cached tokens
    assert eng.decode(s, 3, stop_ids=[])[0] == token


def test_checkpoint_loads_through_the_config(tmp_path):
    cfg, model = injected("titans", 0.5, "memory.pointer=true")
    with torch.no_grad():
        pointer_heads(model).copy_head.gate_scale.fill_(0.1)
    save_adapters(model, tmp_path / "run" / "final", {"config": cfg.to_dict()})
    assert find_checkpoint(tmp_path / "run") == tmp_path / "run" / "final"
    loaded = load_config("tiny", [f"memory.checkpoint={tmp_path / 'run'}"])
    eng = engine_from_config(loaded, progress=False)
    adapters = memory_adapters(eng.model)
    assert [a.kind for a in adapters] == ["titans"] * 2 and all(a.gate.item() == 0.5 for a in adapters)
    off = engine_from_config(load_config("tiny", [f"memory.checkpoint={tmp_path / 'run'}", "memory.copy_head=false"]),
                             progress=False)
    assert eng._copy_active() and not off._copy_active()  # the copy-head ablation closes only the copy gate
    assert [a.gate.item() for a in memory_adapters(off.model)] == [0.5, 0.5]
    wrong = load_config("tiny", ["model.name=tiny-qwen2", f"memory.checkpoint={tmp_path / 'run'}"])
    with pytest.raises(SymphonyError, match="trained on model 'tiny-llama'"):
        engine_from_config(wrong, progress=False)
    with pytest.raises(SymphonyError, match="does not exist"):
        engine_from_config(load_config("tiny", [f"memory.checkpoint={tmp_path / 'nope'}"]), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SymphonyError, match="run-phase 2"):
        find_checkpoint(tmp_path / "empty")


def test_fhrr_read_and_write_match_the_reference():
    from symphony.memory.fhrr import FHRRConfig, FHRRMemory, fhrr_read, phasor

    torch.manual_seed(0)
    mem = FHRRMemory(FHRRConfig(dim=32, heads=2, holo_dim=16, chunk_size=4)).double()
    x, y = torch.randn(1, 10, 32, dtype=torch.float64), torch.randn(1, 6, 32, dtype=torch.float64)
    state = mem.write(x, None)
    assert torch.equal(state, mem(x)[1])  # write == the full forward's state
    theta_q = mem.features(y)[0]
    per_token = torch.stack([fhrr_read(state, phasor(theta_q[:, :, t])) for t in range(6)], dim=2)
    assert torch.allclose(mem.read(y, state), mem.readout(per_token, y.dtype), atol=1e-12)
    assert torch.equal(mem.read(y, None), torch.zeros(1, 6, 32, dtype=torch.float64))  # an empty memory reads 0


def test_titans_read_and_write_match_the_forward():
    from symphony.memory.titans import TitansConfig, TitansMemory

    torch.manual_seed(0)
    mem = TitansMemory(TitansConfig(dim=32, heads=2, chunk_size=4)).double()
    x, y = torch.randn(1, 10, 32, dtype=torch.float64), torch.randn(1, 4, 32, dtype=torch.float64)
    state = mem.write(x, None)
    assert all(torch.equal(a, b) for a, b in zip(state.weights, mem(x)[1].weights))
    # tokens of a fresh chunk read the weights left by the last complete chunk: the forward's output
    aligned = mem.write(x[:, :8], None)
    assert torch.allclose(mem.read(y, aligned), mem(y, aligned)[0], atol=1e-12)


def test_cli_checkpoint_changes_symphony_only(tmp_path):
    """phase 1 -> phase 2 -> gates opened in run/final -> `eval ppl --checkpoint run`: the symphony row moves,
    the sinks baseline stays the base model's; `chat --checkpoint` answers."""
    import json

    from click.testing import CliRunner

    from symphony.cli.main import main
    from symphony.io import read_json
    from symphony.memory.checkpoint import load_adapters

    run = tmp_path / "run"
    invoke = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    assert invoke("run-phase", 1, "-c", "tiny", "-r", run).exit_code == 0
    mem = [a for s in ["memory.kind=fhrr", "memory.pointer=false", *SMALL] for a in ("-s", s)]
    r = invoke("run-phase", 2, "-c", "tiny", "-r", run, *mem)
    assert r.exit_code == 0, r.output
    cfg, model = injected("fhrr", 0.0)
    load_adapters(model, run / "phase2")
    with torch.no_grad():
        for a in memory_adapters(model):
            a.gate.fill_(2.0)
    save_adapters(model, run / "final", {"config": read_json(run / "phase2" / "manifest.json")["config"]})

    rows = {}
    for name, extra in (("plain", []), ("trained", ["--checkpoint", run])):
        out = tmp_path / name
        r = invoke("eval", "ppl", "-c", "tiny", "--max-tokens", 600, "--methods", "sinks,symphony", "--out", out, *extra)
        assert r.exit_code == 0, r.output
        rows[name] = {row["method"]: row["nll"] for row in json.loads((out / "ppl.json").read_text())["rows"]}
    assert rows["plain"]["sinks"] == rows["trained"]["sinks"]
    assert rows["plain"]["symphony"] != rows["trained"]["symphony"]
    r = CliRunner().invoke(main, ["chat", "-c", "tiny", "--checkpoint", str(run), "--max-new-tokens", "4"],
                           input="hello\n/exit\n")
    assert r.exit_code == 0, r.output
