"""Memory planner: from a model config, a dtype/quantisation and a memory limit, the slot budget that fits.

All figures are estimates from the config (no weights are loaded); the OOM eval measures the real thing.
Every term but the KV cache, the attention scores and the memory adapters' pending rows (one input row per
cache slot and adapter, written into the memory when the slot is evicted) is fixed; those grow linearly with
the number of cache slots, so the largest budget that fits is solved for directly. Persistent-memory tokens
take cache slots of their own, beside sinks + ledger + window.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from symphony.config import CacheConfig, parse_size, recall_span_nbytes
from symphony.errors import SymphonyError
from symphony.models.info import context_window, head_dim, kv_bytes_per_token, kv_heads

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_BITS = {"none": None, "8bit": 8, "4bit": 4}
DEFAULT_OVERHEAD_CAP = 600 << 20  # CUDA context + allocator slack, at most this much


def format_size(n: float) -> str:
    """Bytes for people, in the binary units parse_size reads: 8 GB, 5.45 GB, 600 MB, 57344 B."""
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if float(value).is_integer() else f"{value:.2f} {unit}"
    return f"{n:.0f} B"


@dataclass
class Plan:
    limit: int
    weights: int
    activation_base: int  # activation bytes of one segment with an empty cache
    activation_per_slot: int  # ...plus this much per cache slot (attention scores)
    memories: int
    overhead: int
    kv_per_token: int
    slots: int  # cache slots that fit (sinks + ledger + window), leaving room for one segment
    segment_len: int
    context_window: int = 0  # the model's max_position_embeddings (0: unknown)
    limited_by: str = "memory"  # memory | context window
    memory_per_slot: int = 0  # memory adapters' pending input rows, per cache slot

    def activations_at(self, slots: int) -> int:
        return self.activation_base + self.activation_per_slot * slots

    def memories_at(self, slots: int) -> int:
        return self.memories + self.memory_per_slot * slots

    def cache_at(self, slots: int) -> int:
        """KV bytes of a full cache plus the segment being fed."""
        return (slots + self.segment_len) * self.kv_per_token

    def total_at(self, slots: int) -> int:
        return self.weights + self.activations_at(slots) + self.memories_at(slots) + self.overhead + self.cache_at(slots)

    @property
    def activations(self) -> int:
        return self.activations_at(self.slots)

    @property
    def memories_total(self) -> int:
        return self.memories_at(self.slots)

    @property
    def cache(self) -> int:
        return self.cache_at(self.slots)

    @property
    def total(self) -> int:
        return self.total_at(self.slots)

    @property
    def headroom(self) -> int:
        return self.limit - self.total

    def max_slots_in_context(self) -> int | None:
        """Slot positions run up to slots + segment_len - 1, which must stay inside the trained context."""
        return self.context_window - self.segment_len if self.context_window else None

    def fits(self, slots: int) -> bool:
        """Does a cache budget of `slots` (sinks + ledger + window) fit in memory and in the context window?"""
        in_context = self.context_window == 0 or slots + self.segment_len <= self.context_window
        return in_context and self.total_at(slots) <= self.limit

    def split(self, sinks: int = 4, ledger_fraction: float = 0.25, span_len: int = 1,
              reserved: int = 0) -> dict[str, int]:
        """A sinks/ledger/window split of the slots less `reserved` (persistent-memory slots); the ledger is
        a whole number of spans."""
        slots = self.slots - reserved
        if slots < 1:
            return {"sinks": 0, "ledger": 0, "window": 0}
        sinks = min(sinks, slots - 1)  # the window needs at least one slot
        usable = slots - sinks
        span = max(1, span_len)
        ledger = int(usable * ledger_fraction) // span * span
        return {"sinks": sinks, "ledger": ledger, "window": usable - ledger}


def weight_bytes(n_params: int, n_embedding: int, dtype_bytes: int, quantization: str) -> int:
    """bitsandbytes quantises the decoder's Linear layers; embeddings and lm_head stay in the compute dtype.

    NF4 (4bit) stores half a byte per weight plus one fp32 absmax per block of 64; LLM.int8 one byte plus
    one fp32 scale per row (~4 KB rows)."""
    if quantization == "none":
        return n_params * dtype_bytes
    if quantization not in QUANT_BITS:
        raise SymphonyError(f"unknown quantization '{quantization}'; choose none, 4bit or 8bit")
    per_param = {"4bit": 0.5 + 4 / 64, "8bit": 1.0 + 4 / 4096}[quantization]
    return int((n_params - n_embedding) * per_param + n_embedding * dtype_bytes)


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def activation_terms(config, segment_len: int, dtype_bytes: int, quantization: str = "none") -> tuple[int, int]:
    """Peak transient memory of one segment's forward, as (bytes with an empty cache, bytes per cache slot).

    Hidden states, MLP intermediates, q/k/v, attention scores (worst case: a non-fused attention in fp32
    over slots + segment keys), the segment's logits with their fp32 log-softmax (salience), and for a
    quantised model the largest decoder weight dequantised for the matmul."""
    c = _text(config)
    s = segment_len
    heads = c.num_attention_heads
    hidden = 4 * s * c.hidden_size * dtype_bytes
    mlp = 3 * s * c.intermediate_size * dtype_bytes
    qkv = s * (heads + 2 * kv_heads(c)) * head_dim(c) * dtype_bytes
    scores_per_key = heads * s * 4
    logits = s * c.vocab_size * (dtype_bytes + 8)  # model-dtype logits, fp32 copy, fp32 log-softmax
    dequant = 0
    if quantization != "none":
        compute_bytes = 2 if dtype_bytes == 4 else dtype_bytes
        dequant = max(c.hidden_size * c.intermediate_size, c.hidden_size * heads * head_dim(c)) * compute_bytes
    base = hidden + mlp + qkv + scores_per_key * s + logits + dequant
    return base, scores_per_key


def activation_bytes(config, segment_len: int, slots: int, dtype_bytes: int, quantization: str = "none") -> int:
    base, per_slot = activation_terms(config, segment_len, dtype_bytes, quantization)
    return base + per_slot * slots


def make_plan(config, n_params: int, n_embedding: int, dtype: str, quantization: str, limit: int,
              segment_len: int, memories: int = 0, overhead: int | None = None, memory_per_slot: int = 0) -> Plan:
    """The largest cache budget that fits `limit` bytes. Raises SymphonyError when nothing useful fits."""
    if dtype not in DTYPE_BYTES:
        raise SymphonyError(f"cannot plan for dtype '{dtype}'; choose {', '.join(DTYPE_BYTES)}")
    if segment_len < 1:
        raise SymphonyError(f"segment_len must be positive, got {segment_len}")
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_dtype_bytes = 2 if quantization != "none" and dtype == "float32" else dtype_bytes  # bf16 compute
    per_token = kv_bytes_per_token(config, kv_dtype_bytes)
    weights = weight_bytes(n_params, n_embedding, dtype_bytes, quantization)
    overhead = int(overhead if overhead is not None else min(0.08 * limit, DEFAULT_OVERHEAD_CAP))
    act_base, act_per_slot = activation_terms(config, segment_len, dtype_bytes, quantization)
    plan = Plan(limit, weights, act_base, act_per_slot, memories, overhead, per_token, 0, segment_len,
                context_window(config), memory_per_slot=memory_per_slot)

    smaller = ("use a smaller model or a larger GPU" if quantization == "4bit"
               else "use 4-bit quantization (--set model.quantization=4bit) or a smaller model")
    if weights + overhead > limit:
        raise SymphonyError(
            f"{format_size(limit)} cannot hold the weights ({format_size(weights)} in "
            f"{quantization if quantization != 'none' else dtype}) plus {format_size(overhead)} of CUDA context"
            f" and allocator overhead: {smaller}")
    free = limit - plan.total_at(0)
    if free < per_token + act_per_slot + memory_per_slot:
        raise SymphonyError(
            f"{format_size(limit)} holds the weights ({format_size(weights)}) but leaves no room for one segment"
            f" of {segment_len} tokens ({format_size(plan.total_at(0) - weights - overhead)}) and a cache:"
            f" lower --segment-len, or {smaller}")
    slots = free // (per_token + act_per_slot + memory_per_slot)  # total_at is linear in slots
    cap = plan.max_slots_in_context()
    if cap is not None and slots > cap:
        if cap < 1:
            raise SymphonyError(f"segment_len {segment_len} does not fit the model's {plan.context_window}-token"
                                " context window; lower --segment-len")
        slots, plan.limited_by = cap, "context window"
    plan.slots = int(slots)
    assert plan.total <= limit
    return plan


def embedding_params(config) -> int:
    c = _text(config)
    n = c.vocab_size * c.hidden_size
    return n if getattr(c, "tie_word_embeddings", False) else 2 * n


def memory_terms(mem_cfg, config) -> tuple[int, int, str]:
    """Bytes the memory adapters add: (fixed, per cache slot, what in words). Fixed = adapter, pointer and
    persistent-memory parameters plus every adapter's recurrent state (constant in the stream length);
    per slot = one float32 input row per adapter, and the retriever's fp16 hidden-state row. The modules are built
    on the meta device: no memory."""
    import torch

    from symphony.config import parse_layer_spec
    from symphony.memory.kinds import NONE, build_memory
    from symphony.memory.pointer import PointerHeads

    c = _text(config)
    if mem_cfg.kind == NONE:
        n_layers, params, state, dim = 0, 0, 0, c.hidden_size
        what = ["memory.kind none"]
    else:
        with torch.device("meta"):
            memory = build_memory(mem_cfg, c.hidden_size, c.num_attention_heads)
        n_layers = len(parse_layer_spec(mem_cfg.layers, c.num_hidden_layers))
        params = n_layers * (sum(p.numel() for p in memory.parameters()) + 1) * 4  # + the gate; float32
        state, dim = n_layers * memory.state_nbytes(1), c.hidden_size
        what = [f"{mem_cfg.kind} on {n_layers} layers: {format_size(params)} parameters +"
                f" {format_size(state)} state + {dim * 4:,} B/slot pending rows"]
    if mem_cfg.pointer:  # salience router + copy head, float32
        with torch.device("meta"):
            heads = PointerHeads(c.hidden_size, getattr(c, "embedding_size", None) or c.hidden_size)
        params += sum(p.numel() for p in heads.parameters()) * 4
        what.append("pointer heads")
    if mem_cfg.persistent_tokens > 0:
        params += mem_cfg.num_tasks * mem_cfg.persistent_tokens * c.hidden_size * 4
        what.append(f"persistent memory ({mem_cfg.num_tasks} x {mem_cfg.persistent_tokens} tokens)")
    per_slot = n_layers * dim * 4
    if mem_cfg.retriever_dim > 0 and mem_cfg.retriever != "off":
        # projection + centre + threshold (float32); the cache keeps each slot's hidden states at the retriever's
        # layer (fp16) until the slot is archived and pooled into its span's summary
        params += (c.hidden_size * (mem_cfg.retriever_dim + 1) + 1) * 4
        per_slot += c.hidden_size * 2
        what.append(f"HEP-DNA retriever ({c.hidden_size * 2:,} B/slot hidden states)")
    return params + state, per_slot, "; ".join(what)


# -- the `symphony plan` command's library side ---------------------------------------------------------

@dataclass
class PlanReport:
    plan: Plan
    model: str  # what was planned for, in words
    config: object  # the transformers config
    n_params: int
    n_embedding: int
    dtype: str
    quantization: str
    configured: dict[str, int]  # the config's sinks / ledger / window / persistent-memory slots
    span_len: int
    memory_note: str = "memory.kind none"  # what the memories row holds, in words
    recall_note: str = ""  # the recall archive, in words (host memory: not part of the plan's total)


def recall_summary(c: CacheConfig, summary_bytes: int = 0) -> str:
    """The recall archive `c` configures, in words: its bytes and the stream length it keeps whole
    (`summary_bytes`: the HEP-DNA retriever's summary per span, `memory.retriever_dim`)."""
    if c.recall_spans() == 0:
        return "off (" + ("cache.recall_tokens=0" if c.recall_tokens == 0 else "cache.recall_bytes=0") + ")"
    per_token = f"{recall_span_nbytes(c.span_len, summary_bytes) / c.span_len:.2f} B/token"
    summaries = f", with a {summary_bytes}-byte retriever summary per {c.span_len}-token span" if summary_bytes else ""
    if c.recall_path:
        return (f"on disk, a new folder per stream under {c.recall_path}: grows {per_token} with the stream, any"
                f" length kept whole (RAM: none preallocated){summaries}")
    spans = c.recall_spans(summary_bytes)
    return (f"{format_size(c.recall_nbytes(summary_bytes))} in RAM, fixed: token ids of {spans * c.span_len:,}"
            f" tokens kept whole ({per_token}{summaries}); past that the lowest-salience spans give way")


def load_model_config(path: str | Path):
    """A transformers config from a config.json file or a directory holding one (no weights, offline)."""
    from transformers import AutoConfig

    from symphony.models.loading import _check_causal_lm

    p = Path(path).expanduser()
    if p.is_dir() and not (p / "config.json").is_file():
        raise SymphonyError(f"{p} has no config.json; pass a config.json file or a model directory")
    if not p.exists():
        raise SymphonyError(f"model config not found: {p}")
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise SymphonyError(f"cannot read the model config {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    _check_causal_lm(config)
    return config


def plan_for(cfg, vram: str | int, model_config: str | Path | None = None, segment_len: int | None = None,
             memories: int = 0) -> PlanReport:
    """Plan for a SymphonyConfig (its model, dtype, quantisation and cache), or for --model-config."""
    from symphony.models.loading import load_config_only, resolve_source
    from symphony.report import count_parameters_from_config

    limit = parse_size(vram)
    if model_config is not None:
        config, model = load_model_config(model_config), str(model_config)
    else:
        try:
            config = load_config_only(resolve_source(cfg.model.name), cfg.model.trust_remote_code)
        except SymphonyError as e:
            raise SymphonyError(f"{e} (or plan offline from a config file: --model-config PATH/config.json)") from None
        model = cfg.model.name
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else "bfloat16"  # the plan is for a GPU
    n_params = count_parameters_from_config(config)
    n_embedding = embedding_params(config)
    c = cfg.cache
    adapters, per_slot, note = memory_terms(cfg.memory, config)
    plan = make_plan(config, n_params, n_embedding, dtype, cfg.model.quantization, limit,
                     segment_len or c.segment_len, memories=memories + adapters, memory_per_slot=per_slot)
    configured = {"sinks": c.sinks, "ledger": c.ledger, "window": c.window,
                  "persistent": cfg.memory.persistent_tokens}
    return PlanReport(plan, model, config, n_params, n_embedding, dtype, cfg.model.quantization, configured,
                      c.span_len, note, recall_summary(c, cfg.memory.retriever_dim))


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def render_plan(r: PlanReport) -> list[str]:
    p, c = r.plan, _text(r.config)
    quant = {"none": f"{r.dtype} weights", "4bit": f"4-bit NF4 linears + {r.dtype} embeddings/lm_head",
             "8bit": f"8-bit linears + {r.dtype} embeddings/lm_head"}[r.quantization]
    arch = ", ".join(getattr(r.config, "architectures", None) or [r.config.model_type])
    lines = [
        f"# VRAM plan for {r.model} ({arch}, {_count(r.n_params)} parameters), {quant}",
        f"# {c.num_hidden_layers} layers, {kv_heads(c)} KV heads x {head_dim(c)} dims:"
        f" {p.kv_per_token:,} B of KV per token; segment {p.segment_len} tokens",
        "",
    ]
    rows = [
        ("weights", p.weights, f"{r.n_params:,} params ({r.n_embedding:,} in embeddings/lm_head)"),
        ("activations / segment", p.activations, f"{p.segment_len} tokens per forward, scores over"
                                                 f" {p.slots + p.segment_len:,} keys"),
        ("memories", p.memories_total, r.memory_note),
        ("CUDA context/allocator", p.overhead, "context, kernels, fragmentation"),
        ("cache slots", p.cache, f"({p.slots:,} slots + {p.segment_len} segment) x {p.kv_per_token:,} B/token"),
        ("headroom", p.headroom, "unused" + (f" (cache capped by the {p.context_window:,}-token context window)"
                                             if p.limited_by == "context window" else "")),
    ]
    for name, value, note in rows:
        lines.append(f"  {name:<24}{format_size(value):>11}   {note}")
    lines.append(f"  {'-' * 24}{'-' * 11}")
    lines.append(f"  {'total':<24}{format_size(p.total):>11}   of the {format_size(p.limit)} limit"
                 " (every row above but headroom)")
    if r.recall_note:
        lines.append(f"  recall archive (host memory, not in the total): {r.recall_note}")
    persistent = r.configured.get("persistent", 0)
    split = p.split(r.configured["sinks"], 0.25, r.span_len, reserved=persistent)
    extra = f" + {persistent} persistent" if persistent else ""
    lines += [
        "",
        f"suggested split: {split['sinks']} sinks + {split['ledger']} ledger + {split['window']} window{extra}"
        f" = {p.slots:,} slots",
        f"  --set cache.sinks={split['sinks']} --set cache.ledger={split['ledger']} --set cache.window={split['window']}",
    ]
    want = sum(r.configured.values())
    cfg_line = (f"configured budget: {r.configured['sinks']} + {r.configured['ledger']} + {r.configured['window']}"
                f"{extra} = {want:,} slots")
    if p.fits(want):
        lines.append(f"{cfg_line}: fits ({format_size(p.total_at(want))} of {format_size(p.limit)})")
    elif p.context_window and want + p.segment_len > p.context_window:
        lines.append(f"{cfg_line}: does NOT fit: slots + segment exceed the {p.context_window:,}-token context window")
    else:
        lines.append(f"{cfg_line}: does NOT fit: needs {format_size(p.total_at(want))} of {format_size(p.limit)};"
                     f" at most {p.slots:,} slots fit")
    return lines
