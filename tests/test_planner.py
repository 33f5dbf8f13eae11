"""The memory planner and `symphony plan`: sizes, a Qwen2.5-7B-sized budget, errors, the CLI table."""
from __future__ import annotations

import json

import pytest

from helpers import invoke, one_line_error
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.models.info import kv_bytes_per_token
from symphony.planner import (
    embedding_params,
    format_size,
    load_model_config,
    make_plan,
    parse_size,
    plan_for,
    render_plan,
    weight_bytes,
)
from symphony.report import count_parameters_from_config

GiB = 1 << 30

QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "tie_word_embeddings": False, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
    "sliding_window": 131072, "max_window_layers": 28, "use_sliding_window": False, "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2.5-7b")
    (d / "config.json").write_text(json.dumps(QWEN25_7B))
    return d


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    config = load_model_config(qwen_dir)
    return config, count_parameters_from_config(config)


def qwen_plan(qwen, limit, quantization="4bit", dtype="bfloat16", segment_len=256):
    config, n_params = qwen
    return make_plan(config, n_params, embedding_params(config), dtype, quantization, limit, segment_len)


# --- sizes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * GiB), ("8 GB", 8 * GiB), ("8gb", 8 * GiB), ("8G", 8 * GiB), ("8GiB", 8 * GiB),
    ("7.5GiB", int(7.5 * GiB)), (" 512MB ", 512 << 20), ("512mib", 512 << 20), ("64k", 64 << 10),
    ("1TB", 1 << 40), ("1024", 1024), ("100B", 100), (".5GB", GiB // 2), (1024, 1024), (2.5, 2), (0, 0),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "8 XB", "eight GB", "-1GB", "8GB RAM", "1e9", "8..5GB", "8 G B"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(SymphonyError, match="cannot read memory size"):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True])
def test_parse_size_rejects_bad_numbers(value):
    with pytest.raises(SymphonyError):
        parse_size(value)


def test_format_size_round_trips_through_parse_size():
    for n in (8 * GiB, 600 << 20, int(5.45 * GiB), 57344, 100):
        text = format_size(n)
        assert abs(parse_size(text.replace(" ", "")) - n) <= max(1, n * 0.005), text
    assert format_size(8 * GiB) == "8 GB" and format_size(57344) == "56 KB" and format_size(100) == "100 B"


# --- a Qwen2.5-7B-Instruct-sized model ----------------------------------------------------------------------

def test_qwen_facts_match_the_published_model(qwen):
    config, n_params = qwen
    assert n_params == 7_615_616_512  # Qwen2.5-7B: 7.61B parameters
    assert embedding_params(config) == 2 * 152064 * 3584  # untied embeddings and lm_head
    assert kv_bytes_per_token(config, 2) == 57344  # 2 (K,V) x 28 layers x 4 KV heads x 128 dims x 2 B


def test_weight_bytes():
    assert weight_bytes(1000, 100, 2, "none") == 2000
    assert weight_bytes(1000, 100, 4, "none") == 4000
    assert weight_bytes(6400, 0, 2, "4bit") == 6400 // 2 + 6400 // 64 * 4  # nibbles + one fp32 absmax per 64
    assert weight_bytes(4192, 96, 2, "8bit") == 4096 + 4 + 96 * 2  # bytes + one fp32 scale per 4096
    with pytest.raises(SymphonyError):
        weight_bytes(1, 0, 2, "3bit")


def test_qwen_4bit_fits_an_8gb_gpu(qwen):
    p = qwen_plan(qwen, 8 * GiB)
    # NF4 decoder linears (+ absmax) and bf16 embeddings + lm_head: ~5.4 GiB
    assert 5.3 * GiB < p.weights < 5.6 * GiB
    assert p.kv_per_token == 57344
    assert p.slots > 4000
    assert p.limited_by == "memory"
    parts = [p.weights, p.activations, p.memories, p.overhead, p.cache]
    assert p.total == sum(parts) <= p.limit
    assert 0 <= p.headroom == p.limit - sum(parts) < p.kv_per_token + p.activation_per_slot  # no slot left over
    assert p.cache == (p.slots + 256) * 57344
    assert not p.fits(p.slots + 1) and p.fits(p.slots) and p.fits(4100)
    assert p.overhead == 600 << 20 and p.memories == 0
    assert 0 < p.activations < 2 * GiB


def test_split_is_ready_to_use(qwen):
    p = qwen_plan(qwen, 8 * GiB)
    split = p.split(sinks=4, ledger_fraction=0.25, span_len=16)
    assert sum(split.values()) == p.slots
    assert split["sinks"] == 4 and split["ledger"] % 16 == 0 and split["window"] > split["ledger"] > 0
    cfg = load_config("qwen2.5-7b-8gb", [f"cache.{k}={v}" for k, v in split.items()])
    assert cfg.cache.sinks + cfg.cache.ledger + cfg.cache.window == p.slots


def test_more_memory_more_slots_until_the_context_window(qwen):
    slots = [qwen_plan(qwen, gb * GiB).slots for gb in (7, 8, 9)]
    assert slots == sorted(slots) and len(set(slots)) == 3 and slots[-1] < 32768 - 256
    big = qwen_plan(qwen, 80 * GiB)
    assert big.limited_by == "context window"
    assert big.slots + big.segment_len == 32768  # positions never leave the trained context
    assert big.headroom > 60 * GiB and not big.fits(big.slots + 1)


def test_longer_segments_cost_slots(qwen):
    assert qwen_plan(qwen, 8 * GiB, segment_len=1024).slots < qwen_plan(qwen, 8 * GiB, segment_len=256).slots


def test_weights_that_do_not_fit_are_a_clear_error(qwen):
    with pytest.raises(SymphonyError, match=r"^4 GB cannot hold the weights \(5\.\d\d GB in 4bit\)") as e:
        qwen_plan(qwen, 4 * GiB)
    assert "smaller model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SymphonyError, match=r"8 GB cannot hold the weights \(14\.\d\d GB in bfloat16\).*"
                                            r"use 4-bit quantization"):
        qwen_plan(qwen, 8 * GiB, quantization="none")
    with pytest.raises(SymphonyError, match="leaves no room for one segment"):
        qwen_plan(qwen, 6 * GiB)


# --- the command ----------------------------------------------------------------------------------------

def test_cli_plan_with_model_config(qwen_dir):
    res = invoke("plan", "--config", "qwen2.5-7b-8gb", "--vram", "8GB", "--model-config", qwen_dir)
    assert res.exit_code == 0, res.output
    out = res.stdout
    for row in ("weights", "activations / segment", "memories", "fhrr on 2 layers", "CUDA context/allocator",
                "cache slots", "57,344 B/token", "headroom", "total", "of the 8 GB limit"):
        assert row in out, row
    assert "7.62B parameters" in out
    set_line = next(line for line in out.splitlines() if line.strip().startswith("--set cache.sinks="))
    overrides = [tok for tok in set_line.split() if tok != "--set"]
    cfg = load_config("qwen2.5-7b-8gb", overrides)
    assert cfg.cache.sinks + cfg.cache.ledger + cfg.cache.window > 4000
    assert "configured budget: 4 + 1024 + 3072 = 4,100 slots: fits" in out


def test_cli_plan_config_json_file_and_segment_len(qwen_dir):
    res = invoke("plan", "-c", "qwen2.5-7b-8gb", "--vram", "8GB", "--model-config", qwen_dir / "config.json",
                 "--segment-len", 128)
    assert res.exit_code == 0, res.output
    assert "128 tokens per forward" in res.stdout and "+ 128 segment)" in res.stdout


def test_cli_plan_tiny_preset_is_capped_by_its_context_window():
    res = invoke("plan", "-c", "tiny", "--vram", "1GB")
    assert res.exit_code == 0, res.output
    assert "(448 slots + 64 segment) x 512 B/token" in res.stdout
    assert "512-token context window" in res.stdout
    assert "4 + 64 + 128 = 196 slots: fits" in res.stdout


def test_cli_plan_reports_a_budget_that_does_not_fit(qwen_dir):
    res = invoke("plan", "-c", "qwen2.5-7b-8gb", "-s", "cache.window=100000", "--model-config", qwen_dir)
    assert res.exit_code == 0, res.output
    assert "does NOT fit" in res.stdout


def test_cli_plan_errors_are_one_line(qwen_dir, tmp_path):
    line = one_line_error(invoke("plan", "-c", "qwen2.5-7b-8gb", "--vram", "4GB", "--model-config", qwen_dir))
    assert "4 GB cannot hold the weights" in line
    line = one_line_error(invoke("plan", "-c", "qwen2.5-7b-8gb", "-s", "model.quantization=none",
                                 "--model-config", qwen_dir))
    assert "8 GB cannot hold the weights" in line and "use 4-bit quantization" in line
    assert "cannot read memory size" in one_line_error(invoke("plan", "-c", "tiny", "--vram", "lots"))
    assert "has no config.json" in one_line_error(invoke("plan", "-c", "tiny", "--model-config", tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64}))
    assert "not a decoder-only causal LM" in one_line_error(invoke("plan", "--model-config", tmp_path))


def test_cli_plan_offline_hub_model_points_to_model_config(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_line_error(invoke("plan", "-c", "qwen2.5-7b-8gb", "-s", "model.name=nobody/no-such-model-xyz"))
    assert "--model-config" in line


def test_plan_for_library_call(qwen_dir):
    report = plan_for(load_config("qwen2.5-7b-8gb"), "8GB", model_config=qwen_dir)
    assert report.n_params == 7_615_616_512 and report.quantization == "4bit" and report.dtype == "bfloat16"
    assert report.configured == {"sinks": 4, "ledger": 1024, "window": 3072, "persistent": 0}
    text = "\n".join(render_plan(report))
    assert f"{report.plan.slots:,} slots" in text


def test_plan_command_has_help():
    res = invoke("plan", "--help")
    assert res.exit_code == 0
    for opt in ("--config", "--set", "--vram", "--model-config", "--segment-len"):
        assert opt in res.stdout
    assert "plan" in invoke("--help").stdout


def test_plan_counts_memory_adapters_and_persistent_slots():
    """Adapters add their parameters + recurrent state (fixed) and one float32 input row per slot and layer;
    persistent-memory tokens are part of the configured budget and reserved out of the suggested split."""
    from symphony.memory.kinds import build_memory

    no_pointer = "memory.pointer=false"  # the pointer heads' bytes are not part of this sum
    base = plan_for(load_config("tiny", ["memory.kind=none", no_pointer]), "1GB")
    cfg = load_config("tiny", ["memory.kind=titans", "memory.layers=last:2", "memory.persistent_tokens=8",
                               "memory.num_tasks=2", no_pointer])
    report = plan_for(cfg, "1GB")
    mem = build_memory(cfg.memory, 64, 4)
    dim = report.config.hidden_size
    fixed = 2 * ((sum(p.numel() for p in mem.parameters()) + 1) * 4 + mem.state_nbytes(1)) + 2 * 8 * dim * 4
    assert report.plan.memories - base.plan.memories == fixed
    assert report.plan.memory_per_slot == 2 * dim * 4 and base.plan.memory_per_slot == 0
    assert report.plan.memories_total == report.plan.memories + report.plan.slots * 2 * dim * 4
    assert report.configured["persistent"] == 8
    text = "\n".join(render_plan(report))
    assert "titans on 2 layers" in text and "persistent memory (2 x 8 tokens)" in text
    assert "4 + 64 + 128 + 8 persistent = 204 slots: fits" in text
    split = report.plan.split(4, 0.25, 16, reserved=8)
    assert sum(split.values()) == report.plan.slots - 8


def test_plan_counts_the_retriever_and_its_per_slot_hidden_states():
    """A HEP-DNA retriever adds its projection (fixed) and one fp16 hidden-state row per cache slot; off, nothing."""
    keys = ["memory.kind=none", "memory.pointer=false"]
    base = plan_for(load_config("tiny", keys), "1GB")
    on = plan_for(load_config("tiny", keys + ["memory.retriever_dim=32"]), "1GB")
    off = plan_for(load_config("tiny", keys + ["memory.retriever_dim=32", "memory.retriever=off"]), "1GB")
    dim = on.config.hidden_size
    assert on.plan.memories - base.plan.memories == (dim * 33 + 1) * 4
    assert on.plan.memory_per_slot == dim * 2 and base.plan.memory_per_slot == 0
    assert (off.plan.memories, off.plan.memory_per_slot) == (base.plan.memories, 0)
    assert "HEP-DNA retriever" in "\n".join(render_plan(on))
