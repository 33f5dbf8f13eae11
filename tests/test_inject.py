"""Memory adapters (phase 2): zero-gate exactness, trainable set, checkpoints, phase 2 CLI, per-stream state."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from helpers import invoke
from symphony.pipeline.phases import get_phase
from symphony.config import load_config
from symphony.runtime.engine import StreamingEngine
from symphony.errors import SymphonyError
from symphony.memory.adapter import MemoryAdapter
from symphony.memory.checkpoint import ADAPTERS_FILE, load_adapters, load_checkpoint, save_adapters
from symphony.memory.inject import (
    adapter_parameters, adapter_state_dict, inject, memory_adapters, memory_states, pointer_heads, remove_adapters,
    reset_memory_states, set_memory_states,
)
from symphony.memory.titans import TitansState
from symphony.models.compat import with_cache
from symphony.models.tiny import tiny_model
from symphony.pipeline.runs import manifest_path, read_manifest

SMALL = ["memory.fhrr.holo_dim=32", "memory.chunk_size=16", "memory.titans.hidden=16"]
SMALL_ARGS = [a for s in SMALL for a in ("-s", s)]


def mem_cfg(kind="fhrr", *extra):
    return load_config("tiny", [f"memory.kind={kind}", "memory.pointer=false", *SMALL, *extra]).memory


def fresh_model():
    return tiny_model("tiny-llama", seed=0)


def ids_for(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, n), generator=g)


@torch.no_grad()
def stream_logits(model, ids, segment=32):
    """Logits of `ids` fed in segments through one cache, so the memory state carries between calls."""
    cache = DynamicCache(config=model.config)
    return torch.cat([model(**with_cache(model, cache, input_ids=ids[:, s:s + segment], use_cache=True)).logits
                      for s in range(0, ids.shape[1], segment)], dim=1)


def set_gates(model, value):
    with torch.no_grad():
        for a in memory_adapters(model):
            a.gate.fill_(value)


# --- exactness and the trainable set ---------------------------------------------------------------

@pytest.mark.parametrize("kind,pointer", [("fhrr", False), ("titans", False), ("fhrr", True), ("titans", True)])
def test_zero_gate_injection_is_bit_exact(kind, pointer):
    model = fresh_model()
    ids = ids_for()
    base = stream_logits(model, ids)
    adapters = inject(model, mem_cfg(kind, f"memory.pointer={pointer}", "memory.layers=all"))
    assert [a.layer_idx for a in adapters] == [0, 1] and all(a.kind == kind for a in adapters)
    assert all(a.gate.item() == 0.0 for a in adapters)
    injected = stream_logits(model, ids)
    assert torch.equal(base, injected)
    # the branch really ran and its state carried across the segments
    states = memory_states(model)
    assert len(states) == 2 and all(s is not None for s in states)
    if kind == "titans":
        assert isinstance(states[0], TitansState)
    if pointer:
        heads = pointer_heads(model)
        assert heads is not None and heads.copy_head.gate_scale.item() == 0.0
    else:
        assert pointer_heads(model) is None


def test_a_live_gate_changes_the_output():
    model = fresh_model()
    ids = ids_for()
    base = stream_logits(model, ids)
    inject(model, mem_cfg("fhrr"))
    set_gates(model, 1.0)
    reset_memory_states(model)
    live = stream_logits(model, ids)
    assert not torch.allclose(base, live)
    assert torch.isfinite(live).all()


def test_only_adapter_parameters_are_trainable():
    model = fresh_model()
    base_names = {n for n, _ in model.named_parameters()}
    inject(model, mem_cfg("titans", "memory.pointer=on"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not trainable & base_names
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in adapter_parameters(model)}
    assert any(n.startswith("symphony_pointer.copy_head") for n in trainable)
    # the gate gets a gradient at zero: training can open it
    x = ids_for(40)
    model(input_ids=x, labels=x).loss.backward()
    assert all(a.gate.grad is not None and a.gate.grad.abs() > 0 for a in memory_adapters(model))


def test_base_weight_names_are_unchanged():
    model = fresh_model()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    inject(model, mem_cfg("fhrr", "memory.pointer=on"))
    keys = set(model.state_dict())
    assert set(base_sd) <= keys
    assert keys - set(base_sd) == set(adapter_state_dict(model))
    result = model.load_state_dict(base_sd, strict=False)  # the base checkpoint still loads into the injected model
    assert not result.unexpected_keys and set(result.missing_keys) == set(adapter_state_dict(model))
    remove_adapters(model)
    assert set(model.state_dict()) == set(base_sd) and not memory_adapters(model)


def test_injection_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = fresh_model(), fresh_model(), fresh_model()
    inject(a, mem_cfg("fhrr"), seed=0)
    inject(b, mem_cfg("fhrr"), seed=0)
    inject(c, mem_cfg("fhrr"), seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = adapter_state_dict(a), adapter_state_dict(b), adapter_state_dict(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_layer_selection_and_errors():
    model = fresh_model()
    assert [a.layer_idx for a in inject(model, mem_cfg("fhrr", "memory.layers=-1"))] == [1]
    with pytest.raises(SymphonyError, match="already has memory adapters"):
        inject(model, mem_cfg("fhrr"))
    with pytest.raises(SymphonyError, match=r"memory.layers.*layer 5 does not exist"):
        inject(fresh_model(), mem_cfg("fhrr", "memory.layers=0,5"))
    assert inject(fresh_model(), mem_cfg("none")) == []


@pytest.mark.parametrize("override,key", [
    ("memory.kind=hopfield", "memory.kind"), ("memory.layers=last:0", "memory.layers"),
    ("memory.layers=one", "memory.layers"), ("memory.fhrr.holo_dim=0", "memory.fhrr.holo_dim"),
    ("memory.pointer=maybe", "memory.pointer"),
])
def test_memory_config_is_validated(override, key):
    with pytest.raises(SymphonyError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])


# --- checkpoints -----------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """An injected fhrr model (+ pointer) with live gates, saved under tmp_path/phase2."""
    model = fresh_model()
    inject(model, mem_cfg("fhrr", "memory.pointer=on"), seed=0)
    set_gates(model, 0.5)
    out = tmp_path / "phase2"
    manifest = save_adapters(model, out, {"config": {"memory": {"kind": "fhrr", "holo_dim": 32}}})
    return model, out, manifest


def test_checkpoint_round_trip(saved):
    model, out, manifest = saved
    assert sorted(p.name for p in out.iterdir()) == [ADAPTERS_FILE, "manifest.json"]
    assert manifest["adapters"]["tensors"] == len(adapter_state_dict(model))
    other = fresh_model()
    inject(other, mem_cfg("fhrr", "memory.pointer=on"), seed=1)  # different random adapters
    mine, theirs = adapter_state_dict(model), adapter_state_dict(other)
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine)
    assert load_adapters(other, out)["adapters"]["sha256"] == manifest["adapters"]["sha256"]
    theirs = adapter_state_dict(other)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    ids = ids_for()
    reset_memory_states(model)
    assert torch.equal(stream_logits(model, ids), stream_logits(other, ids))


@pytest.mark.parametrize("extra,words", [
    (["memory.fhrr.holo_dim=64"], ["shape mismatch", "memory_adapter.memory.proj"]),
    (["memory.layers=0"], ["unexpected keys", "model.layers.1.mlp.memory_adapter"]),
    (["memory.pointer=off"], ["unexpected keys", "symphony_pointer"]),
    (["memory.kind=titans"], ["missing keys", "unexpected keys"]),
])
def test_mismatched_checkpoint_is_refused(saved, extra, words):
    _, out, _ = saved
    other = fresh_model()
    inject(other, mem_cfg("fhrr", "memory.pointer=on", *extra))  # later overrides win
    before = {k: v.clone() for k, v in adapter_state_dict(other).items()}
    with pytest.raises(SymphonyError) as ei:
        load_adapters(other, out)
    msg = str(ei.value)
    assert "\n" not in msg and "does not match" in msg and "memory.holo_dim=32" in msg
    for w in words:
        assert w in msg
    after = adapter_state_dict(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing loaded partially


def test_corrupt_or_missing_checkpoint_is_refused(saved):
    _, out, _ = saved
    other = fresh_model()
    inject(other, mem_cfg("fhrr", "memory.pointer=on"))
    path = out / ADAPTERS_FILE
    good = path.read_bytes()
    hint = f"symphony run-phase 2 --run-dir {out.parent} --force"
    # a flipped byte in the data: caught by the manifest's sha256
    path.write_bytes(good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:])
    with pytest.raises(SymphonyError, match="sha256") as ei:
        load_adapters(other, out)
    assert hint in str(ei.value)
    # without the manifest, safetensors itself refuses garbage and truncation
    (out / "manifest.json").unlink()
    for bad in (b"not a safetensors file at all", good[: len(good) // 2]):
        path.write_bytes(bad)
        with pytest.raises(SymphonyError) as ei:
            load_adapters(other, out)
        assert "corrupt" in str(ei.value) and hint in str(ei.value) and "\n" not in str(ei.value)
    path.unlink()
    with pytest.raises(SymphonyError, match="no adapter checkpoint") as ei:
        load_adapters(other, out)
    assert f"symphony run-phase 2 --run-dir {out.parent}" in str(ei.value)


# --- per-stream memory in the engine ---------------------------------------------------------------

def test_engine_without_adapters_keeps_no_memory():
    cfg = load_config("tiny")
    engine = StreamingEngine(fresh_model(), None, cfg.cache, cfg.salience, policy="full")
    s = engine.new_stream()
    engine.feed(s, ids_for(16)[0])
    assert s.memory is None and s.memory_nbytes() == 0


def test_set_memory_states_round_trip():
    model = fresh_model()
    inject(model, mem_cfg("fhrr"))
    stream_logits(model, ids_for(32))
    saved = memory_states(model)
    reset_memory_states(model)
    assert memory_states(model) == [None, None]
    set_memory_states(model, saved)
    assert all(x is y for x, y in zip(memory_states(model), saved))
    with pytest.raises(ValueError, match="2 adapters"):
        set_memory_states(model, [None])
    with pytest.raises(ValueError, match="batch 1 but got batch 2"):
        model(input_ids=ids_for(8).repeat(2, 1))


# --- phase 2 ---------------------------------------------------------------------------------------

def test_phase2_cli_after_phase1(tmp_path):
    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path)
    assert res.exit_code == 0, res.output
    args = ["run-phase", 2, "-c", "tiny", "-r", tmp_path, "--set", "memory.kind=fhrr", *SMALL_ARGS]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "phase 2 (inject): written" in res.stdout and "logits equal to the base: true" in res.stdout
    m = read_manifest(tmp_path, 2)
    assert m["name"] == "inject" and m["logits_equal"] is True and m["max_abs_diff"] == 0.0
    assert m["memory"]["kind"] == "fhrr" and m["memory"]["layers"] == [0, 1] and m["memory"]["adapters"] == 2
    assert m["parameters"]["trainable"] == m["adapters"]["parameters"] > 0
    assert m["verification"]["tokens"] == 256 and m["config"]["memory"]["fhrr"]["holo_dim"] == 32
    assert (tmp_path / "phase2" / ADAPTERS_FILE).is_file()
    # the checkpoint loads into a model injected from the same config
    model = fresh_model()
    inject(model, load_config("tiny", ["memory.kind=fhrr", *SMALL]).memory)
    load_adapters(model, tmp_path / "phase2")

    before = manifest_path(tmp_path, 2).read_bytes()
    res = invoke(*args)
    assert res.exit_code == 0 and "up-to-date" in res.stdout
    assert manifest_path(tmp_path, 2).read_bytes() == before
    res = invoke("run-phase", 2, "-c", "tiny", "-r", tmp_path, "-s", "memory.kind=titans")
    assert res.exit_code == 2 and "different memory/model config" in res.stderr and "--force" in res.stderr
    res = invoke("run-phase", 2, "-c", "tiny", "-r", tmp_path, "-s", "memory.kind=titans", "--force", *SMALL_ARGS)
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path, 2)["memory"]["kind"] == "titans"


def test_phase2_before_phase1_is_one_line_error(tmp_path):
    res = invoke("run-phase", 2, "-c", "tiny", "-r", tmp_path, "--set", "memory.kind=fhrr")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    assert f"symphony run-phase 1 --run-dir {tmp_path}" in lines[0]
    assert not (tmp_path / "phase2").exists()


def test_phase2_refusals(tmp_path):
    run = lambda *o: get_phase(2)(load_config("tiny", list(o)), tmp_path, progress=False)  # noqa: E731
    get_phase(1)(load_config("tiny"), tmp_path, progress=False)
    with pytest.raises(SymphonyError, match="gate_init' must be 0.0"):
        run("memory.kind=fhrr", "memory.gate_init=0.5")
    with pytest.raises(SymphonyError, match="different model/calibration config.*symphony run-phase 1"):
        run("memory.kind=fhrr", "seed=3")
    with pytest.raises(SymphonyError, match="layer 7 does not exist"):
        run("memory.kind=fhrr", "memory.layers=7")
    # kind none is a valid (empty) injection: the baseline for later phases
    m = run("memory.kind=none", "memory.pointer=false")
    assert m["logits_equal"] is True and m["parameters"]["trainable"] == 0 and m["memory"]["adapters"] == 0
    assert json.loads((tmp_path / "phase2" / "manifest.json").read_text())["adapters"]["tensors"] == 0


def test_adapter_is_a_registered_child_of_the_mlp():
    model = fresh_model()
    (adapter,) = inject(model, mem_cfg("fhrr", "memory.layers=1"))
    mlp = model.model.layers[1].mlp
    assert mlp.memory_adapter is adapter and isinstance(adapter, MemoryAdapter)
    assert type(mlp).__name__ == "LlamaMLP"  # the original module stays in place


@pytest.mark.parametrize("recorded,expected", [(None, False), (True, True), (False, False)])
def test_titans_checkpoint_without_read_norm_key_loads_as_built(tmp_path, recorded, expected):
    """A Titans checkpoint from before `memory.titans_read_norm` existed was built without it: loading must not
    switch it on (same weights, different outputs); one that records the key gets what it records."""
    model = fresh_model()
    inject(model, mem_cfg("titans"), seed=0)
    mem = {"kind": "titans", "holo_dim": 32, "chunk_size": 16, "titans_hidden": 16}
    if recorded is not None:
        mem["titans_read_norm"] = recorded
    save_adapters(model, tmp_path / "ck", {"config": {"memory": mem}})
    other = fresh_model()
    load_checkpoint(other, tmp_path / "ck")
    assert [a.memory.cfg.read_norm for a in memory_adapters(other)] == [expected] * len(memory_adapters(other))
