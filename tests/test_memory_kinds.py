"""The memory-kind registry: its kinds, their `memory.<kind>.*` sections, old flat keys, phase 6's parameters,
and a kind added by one registry entry alone."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from symphony.config import MemoryConfig, flat_memory_dict, load_config, recorded_memory_config
from symphony.errors import SymphonyError
from symphony.memory import kinds
from symphony.memory.checkpoint import load_checkpoint, save_adapters
from symphony.memory.inject import inject, memory_adapters, pointer_heads
from symphony.memory.kinds import KINDS, MemoryKind, build_memory, calibrated_parameter_names, kind_names
from symphony.models.tiny import tiny_model
from symphony.pipeline.train import _trainable, effective_config

SMALL = ["memory.fhrr.holo_dim=32", "memory.chunk_size=16", "memory.titans.hidden=16"]


def fresh_model():
    return tiny_model("tiny-llama", seed=0)


def test_registry_lists_fhrr_and_titans():
    assert set(KINDS) == {"fhrr", "titans"} and kind_names() == ("none", "fhrr", "titans")
    for name, kind in KINDS.items():
        assert kind.name == name and isinstance(getattr(MemoryConfig(), name), kind.settings)
    with pytest.raises(SymphonyError, match="'memory.kind' must be one of none, fhrr, titans; got 'hopfield'"):
        load_config("tiny", ["memory.kind=hopfield"])


def test_nested_keys_reach_the_built_memory():
    cfg = load_config("tiny", ["memory.kind=titans", "memory.chunk_size=8", "memory.heads=2", "memory.titans.hidden=12",
                               "memory.titans.symplectic=true", "memory.titans.pages=3",
                               "memory.titans.page_threshold=0.25", "memory.titans.read_norm=false"])
    model = fresh_model()
    adapters = inject(model, cfg.memory)
    assert adapters
    for a in adapters:
        c = a.memory.cfg
        assert (c.hidden, c.use_symplectic_gating, c.num_pages, c.page_threshold, c.read_norm, c.chunk_size,
                c.heads) == (12, True, 3, 0.25, False, 8, 2)
    fhrr = build_memory(load_config("tiny", ["memory.fhrr.holo_dim=24"]).memory, dim=64, model_heads=4)
    assert (fhrr.cfg.holo_dim, fhrr.cfg.heads, fhrr.cfg.chunk_size) == (24, 4, 16)


def test_old_flat_keys_read_as_their_new_names(tmp_path):
    old = ["memory.holo_dim=48", "memory.titans_hidden=12", "memory.titans_symplectic=true", "memory.titans_pages=2",
           "memory.titans_page_threshold=0.25", "memory.titans_read_norm=false"]
    new = ["memory.fhrr.holo_dim=48", "memory.titans.hidden=12", "memory.titans.symplectic=true",
           "memory.titans.pages=2", "memory.titans.page_threshold=0.25", "memory.titans.read_norm=false"]
    assert load_config("tiny", old).memory == load_config("tiny", new).memory
    with pytest.raises(SymphonyError, match="'memory.titans.pages' must be positive"):
        load_config("tiny", ["memory.titans_pages=0"])  # errors name the new key
    path = tmp_path / "old.yaml"
    path.write_text("memory:\n  kind: titans\n  titans_pages: 2\n  holo_dim: 48\n")
    cfg = load_config(str(path))
    assert (cfg.memory.titans.pages, cfg.memory.fhrr.holo_dim) == (2, 48)
    path.write_text("memory:\n  titans_pages: 2\n  titans:\n    pages: 3\n")
    with pytest.raises(SymphonyError, match="both 'memory.titans_pages' and its new name 'memory.titans.pages'"):
        load_config(str(path))


# an old run's recorded `config.memory`, as it was written before kinds had sections (and before titans_read_norm)
OLD_MANIFEST_MEMORY = {"kind": "titans", "pointer": False, "layers": "last:2", "heads": 0, "holo_dim": 32,
                       "chunk_size": 16, "titans_hidden": 16, "titans_symplectic": False, "titans_pages": 2,
                       "titans_page_threshold": 0.25, "gate_init": 0.0, "copy_head": True, "persistent_tokens": 0,
                       "num_tasks": 1, "checkpoint": "somewhere", "retired_key": 1}


def test_old_style_manifest_with_flat_keys_loads(tmp_path):
    cfg = load_config("tiny", ["memory.kind=titans", "memory.pointer=false", "memory.titans.pages=2",
                               "memory.titans.page_threshold=0.25", "memory.titans.read_norm=false", *SMALL])
    model = fresh_model()
    inject(model, cfg.memory, seed=0)
    save_adapters(model, tmp_path / "ck", {"config": {"memory": OLD_MANIFEST_MEMORY}})
    other = fresh_model()
    load_checkpoint(other, tmp_path / "ck")
    for a in memory_adapters(other):
        c = a.memory.cfg
        assert (c.hidden, c.num_pages, c.page_threshold, c.read_norm) == (16, 2, 0.25, False)
    recorded = recorded_memory_config(OLD_MANIFEST_MEMORY)
    assert recorded.checkpoint == "" and recorded.fhrr.holo_dim == 32 and recorded.titans.read_norm is False


def test_effective_config_reads_an_old_phase2_manifest(tmp_path):
    (tmp_path / "phase2").mkdir()
    made = {"model": {"name": "tiny-llama"}, "memory": OLD_MANIFEST_MEMORY}
    (tmp_path / "phase2" / "manifest.json").write_text(json.dumps({"config": made}))
    cfg = load_config("tiny", ["memory.kind=fhrr", "memory.titans.read_norm=true", "memory.persistent_tokens=3"])
    out = effective_config(cfg, tmp_path)
    m = out.memory
    assert (m.kind, m.titans.pages, m.titans.hidden, m.titans.read_norm, m.fhrr.holo_dim, m.checkpoint) == \
        ("titans", 2, 16, False, 32, "")
    assert m.persistent_tokens == 0 and cfg.memory.kind == "fhrr"  # recorded wins; the caller's config untouched
    # a key the record lacks keeps the caller's value
    (tmp_path / "phase2" / "manifest.json").write_text(json.dumps({"config": {"memory": {"kind": "fhrr"}}}))
    assert effective_config(cfg, tmp_path).memory.persistent_tokens == 3


def test_phase2_fingerprint_is_the_one_runs_were_made_with():
    """Runs made before kinds had sections hashed the flat keys; the same settings keep that fingerprint."""
    from symphony.pipeline.freeze import phase1_fingerprint
    from symphony.pipeline.inject import phase2_fingerprint
    from symphony.pipeline.runs import fingerprint

    cfg = load_config("tiny", ["memory.kind=titans", "memory.titans.pages=2", "memory.fhrr.holo_dim=48"])
    m = cfg.memory
    flat = {"kind": "titans", "pointer": m.pointer, "layers": m.layers, "heads": m.heads, "holo_dim": 48,
            "chunk_size": m.chunk_size, "titans_hidden": 0, "titans_symplectic": False, "titans_pages": 2,
            "titans_page_threshold": 0.5, "titans_read_norm": True, "gate_init": 0.0, "copy_head": m.copy_head,
            "persistent_tokens": 0, "num_tasks": 1}
    assert flat_memory_dict(m) == {**flat, "checkpoint": "", "retriever": "auto", "retriever_dim": 0,
                                   "retriever_layer": -1}
    assert phase2_fingerprint(cfg) == fingerprint({"phase1": phase1_fingerprint(cfg), "memory": flat, "seed": cfg.seed})
    cfg.memory.retriever = "off"  # what recall loads, not what phase 2 builds
    assert phase2_fingerprint(cfg) == fingerprint({"phase1": phase1_fingerprint(cfg), "memory": flat, "seed": cfg.seed})


# ---- phase 6 -----------------------------------------------------------------------------------------

def _old_rule(name: str) -> bool:
    """Phase 6's selection before memories declared it: parameter names matched by substring."""
    return name.rsplit(".", 1)[-1] in ("gate", "decay_w", "gate_scale") or any(
        f".{k}." in name for k in ("to_gates", "to_beta", "gate"))


PER_ADAPTER = {
    "fhrr": {"gate", "memory.to_beta.weight", "memory.to_beta.bias", "memory.decay_w"},
    "titans": {"gate", "memory.to_gates.weight", "memory.to_gates.bias"},
}
COPY_GATE = {"symphony_pointer.copy_head.gate.weight", "symphony_pointer.copy_head.gate.bias",
             "symphony_pointer.copy_head.gate_scale"}


@pytest.mark.parametrize("kind,extra", [("fhrr", []), ("titans", []),
                                        ("titans", ["memory.titans.symplectic=true", "memory.titans.pages=2"])])
def test_phase6_calibrates_the_same_parameters_as_before(kind, extra):
    model = fresh_model()
    inject(model, load_config("tiny", [f"memory.kind={kind}", "memory.pointer=true", *SMALL, *extra]).memory)
    chosen = {n for n, p in model.named_parameters() if any(p is q for q in _trainable(model, 6))}
    layers = [a.layer_idx for a in memory_adapters(model)]
    assert layers == [0, 1]
    recorded = {f"model.layers.{i}.mlp.memory_adapter.{n}" for i in layers for n in PER_ADAPTER[kind]} | COPY_GATE
    assert chosen == recorded
    candidates = [n for n, _ in model.named_parameters()
                  if ".memory_adapter." in n or n.startswith("symphony_pointer.")]
    assert chosen == {n for n in candidates if _old_rule(n)}
    assert calibrated_parameter_names(model) == recorded
    assert pointer_heads(model) is not None


# ---- a kind added by one registry entry -----------------------------------------------------------------

@dataclass
class ToySettings:
    scale: float = 2.0


class ToyMemory(nn.Module):
    """A running sum of the (projected) inputs: the smallest thing that satisfies `kinds.Memory`."""

    calibrated_parameters = ("mix",)

    def __init__(self, s: ToySettings, dim: int, heads: int, chunk_size: int):
        super().__init__()
        self.scale, self.heads, self.chunk_size = s.scale, heads, chunk_size
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mix = nn.Parameter(torch.ones(()))

    def init_state(self, batch, device=None):
        return torch.zeros(batch, self.proj.in_features, device=device)

    def state_nbytes(self, batch=1):
        return batch * self.proj.in_features * 4

    def forward(self, x, state=None, write_mask=None):
        state = self.init_state(x.shape[0], x.device) if state is None else state
        running = state[:, None] + x.cumsum(1)
        return self.mix * self.scale * self.proj(running), running[:, -1]

    def read(self, x, state):
        state = self.init_state(x.shape[0], x.device) if state is None else state
        return self.mix * self.scale * self.proj(state[:, None].expand_as(x))

    def write(self, x, state):
        return self.forward(x, state)[1]


def test_a_toy_kind_registered_alone_is_configured_injected_and_calibrated(monkeypatch):
    toy = MemoryKind("toy", ToySettings, ToyMemory)
    monkeypatch.setitem(KINDS, "toy", toy)
    cfg = load_config("tiny", ["memory.kind=toy", "memory.pointer=false", "memory.heads=2"])
    model = fresh_model()
    adapters = inject(model, cfg.memory)
    assert [type(a.memory) for a in adapters] == [ToyMemory, ToyMemory]
    assert (adapters[0].memory.scale, adapters[0].memory.heads, adapters[0].memory.chunk_size) == (2.0, 2, 16)
    assert adapters[0].state_nbytes(1) == 64 * 4
    with torch.no_grad():
        for a in adapters:
            a.gate.fill_(0.1)
        model(input_ids=torch.arange(8)[None])
    assert all(a.state is not None for a in adapters)
    chosen = {n for n, p in model.named_parameters() if any(p is q for q in _trainable(model, 6))}
    assert chosen == {f"model.layers.{i}.mlp.memory_adapter.{n}" for i in (0, 1) for n in ("gate", "memory.mix")}


def test_a_kind_whose_module_does_not_declare_its_calibrated_parameters_is_refused(monkeypatch):
    class Undeclared(ToyMemory):
        calibrated_parameters = None

    monkeypatch.setitem(KINDS, "toy", MemoryKind("toy", ToySettings, Undeclared))
    with pytest.raises(TypeError, match="must declare `calibrated_parameters`"):
        build_memory(load_config("tiny", ["memory.kind=toy"]).memory, dim=64, model_heads=4)
    assert kinds.NONE == "none"
