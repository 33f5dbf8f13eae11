"""One config system: typed dataclasses, YAML presets in `configs/`, `--set section.key=value` overrides.

Resolution order: dataclass defaults <- preset/YAML file <- overrides. Unknown keys are errors
that name the key and list the valid ones, so a typo never silently does nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from symphony.errors import SymphonyError
from symphony.io import ensure_writable_dir
from symphony.memory.kinds import KINDS, kind_names


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str | int | float) -> int:
    """'8GB', '7.5 GiB', '512MB', 1024 -> bytes (GB means GiB, as GPU sizes are quoted)."""
    if isinstance(text, bool):
        raise SymphonyError(f"cannot read memory size {text!r}; use e.g. 8GB, 7.5GiB or 512MB")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise SymphonyError(f"memory size must be a non-negative number of bytes, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise SymphonyError(f"cannot read memory size '{text}'; use e.g. 8GB, 7.5GiB or 512MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class ModelConfig:
    # An embedded preset ("smollm2-135m"), a built-in random test model ("tiny-llama", "tiny-qwen2",
    # "tiny-mistral"), a local directory, a .gguf file, or a Hugging Face hub id.
    name: str = "smollm2-135m"
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    device: str = "cpu"  # cpu | cuda | auto
    quantization: str = "none"  # none | 4bit | 8bit (bitsandbytes)
    trust_remote_code: bool = False


@dataclass
class CacheConfig:
    policy: str = "symphony"  # a name in symphony.runtime.policies.POLICIES
    sinks: int = 4  # first tokens, always kept (attention sinks)
    ledger: int = 512  # slots for salient spans (HEP-DNA retention)
    window: int = 1024  # most recent tokens
    segment_len: int = 256  # tokens per prefill forward; bounds activation memory
    span_len: int = 16  # the ledger keeps whole spans of this many tokens
    # the recall archive (symphony/runtime/recall.py): token ids of evicted spans, in RAM preallocated to this many
    # bytes ("8MB" or a number; each span takes 4 x span_len + 12: 4.75 B/token at span_len 16, so 8MB covers
    # 1.77M tokens whole); past that, the lowest-salience span gives way. 0 = off
    recall_bytes: str = "8MB"
    recall_tokens: int = -1  # the older key: when set (>= 0) it sizes the archive in token ids instead (0 = off)
    # a folder: each stream's archive is memory-mapped files in a new subfolder there, growing on disk with the
    # stream (every span kept, RAM constant) and readable again after a restart; empty = in RAM
    recall_path: str = ""
    recall_budget: int = 192  # tokens of recalled spans re-read in front of a question
    # a sentence is re-read beside the best one only if it weighs at least this share of it and adds a question
    # term at least this share of its heaviest (facts that merely repeat the template stay out); 0 = any gain
    recall_min_gain: float = 0.5
    # searches that follow a name the re-read text shares with other facts (`VAR B = VAR A`); 0 = one search
    recall_hops: int = 4
    # a reply whose last this-many tokens match the re-read text continues it exactly (runtime/copying.py); 0 = off
    recall_copy: int = 3

    def recall_spans(self, summary_bytes: int = 0) -> int:
        """Spans the in-RAM recall archive has room for (0: recall off): when `recall_tokens` is set (>= 0), that many
        token ids' worth (at least one span), else `recall_bytes` over one span's bytes (`summary_bytes`: the
        retriever's summary per span, when the model has one)."""
        if self.recall_tokens >= 0:
            return max(1, self.recall_tokens // max(1, self.span_len)) if self.recall_tokens else 0
        return parse_size(self.recall_bytes) // recall_span_nbytes(self.span_len, summary_bytes)

    def recall_nbytes(self, summary_bytes: int = 0) -> int:
        """Bytes of the in-RAM recall archive, fixed by the config (0: off); a disk-backed archive
        (`recall_path`) preallocates none and grows on disk instead."""
        return self.recall_spans(summary_bytes) * recall_span_nbytes(self.span_len, summary_bytes)


# the recall archive's layout (symphony/runtime/recall.py): an int32 id per token, an int64 stream start and a
# float32 salience per span
RECALL_ID_BYTES, RECALL_SPAN_BYTES = 4, 12


def recall_span_nbytes(span_len: int, summary_bytes: int = 0) -> int:
    """Bytes one archived span takes: its ids, start and salience, and the HEP-DNA retriever's summary (int8)."""
    return RECALL_ID_BYTES * max(1, span_len) + RECALL_SPAN_BYTES + max(0, summary_bytes)


@dataclass
class SalienceConfig:
    surprisal_weight: float = 1.0  # -log p(token) under the model
    novelty_weight: float = 4.0  # bonus for an n-gram not seen earlier in the stream
    ngram: int = 3
    novelty_table_bits: int = 20  # fixed-size hash table: constant memory at any length
    smooth_radius: int = 4  # a salient token lends its score to its neighbours (keep the sentence)


@dataclass
class CalibrationConfig:
    text: str = "builtin"  # builtin | path to a text file | datasets name
    tokens: int = 2048
    segment_len: int = 512


MIN_TABLE_BITS, MAX_TABLE_BITS = 8, 30  # novelty table: 256 B .. 1 GiB of flags


def _kind_sections(cls):
    """One section per memory kind, `memory.<kind>.*`: that kind's settings dataclass (symphony/memory/kinds.py),
    so a kind registered there is configurable without touching this file."""
    for kind in KINDS.values():
        cls.__annotations__[kind.name] = kind.settings
        setattr(cls, kind.name, field(default_factory=kind.settings))
    return cls


@dataclass
@_kind_sections
class MemoryConfig:
    """Memory adapters attached to the frozen model (phase 2 onwards); kind none = the bare base model.

    The keys below apply to every kind; each kind's own settings are its section, `memory.fhrr.holo_dim`,
    `memory.titans.pages`, ... (fields `fhrr`, `titans`: see symphony/memory/kinds.py)."""

    kind: str = "none"  # none | fhrr | titans (symphony/memory/kinds.py)
    pointer: bool = False  # on: HEP-DNA salience router + copy head (saved with the adapters)
    layers: str = "last:2"  # decoder layers that get an adapter: all | last:N | first:N | 0,3,5 (negative = from the end)
    heads: int = 0  # memory heads per layer; 0 -> the model's attention heads
    chunk_size: int = 64  # tokens per chunk of the FHRR scan / per Titans surprise step
    gate_init: float = 0.0  # adapter gate at injection; 0.0 makes the injected model exactly the base model
    copy_head: bool = True  # the copy head: trained (phases 5-7) and mixed into decoding; false: neither (router only)
    # HEP-DNA retriever (symphony/memory/retriever.py): bytes of the learned summary each archived span keeps
    # (int8), 0 = none; `retriever_layer` indexes the model's hidden states (-1: the final, normed ones)
    retriever_dim: int = 0
    retriever_layer: int = -1
    # which retriever recall uses: auto (a checkpoint's own, else the one trained for this model that ships with
    # the package, if any) | off (none: lexical recall only) | a .safetensors file (symphony's save_retriever)
    retriever: str = "auto"
    persistent_tokens: int = 0  # learned persistent-memory tokens per task, fixed first cache slots (0 = off)
    num_tasks: int = 1  # persistent-memory tasks (chat/generate --task-id, SymphonyModel task_ids)
    checkpoint: str = ""  # trained adapters to load (a phase run's DIR, DIR/final or DIR/phaseN); their own
    # manifest then sets every other memory.* key. Empty: no adapters (the bare base model)


def _moved_memory_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (keys of the memory section) with the flat keys used before each kind had a section (memory.holo_dim,
    memory.titans_pages, ...: in YAML files, --set options and run manifests) moved to their section, as
    memory.fhrr.holo_dim, memory.titans.pages. They are read as the new names, without a warning."""
    moved = {old: (kind.name, new) for kind in KINDS.values() for old, new in kind.renamed.items()}
    if not any(key in moved for key in data):
        return data
    out = {k: v for k, v in data.items() if k not in moved}
    for old, value in data.items():
        if old not in moved:
            continue
        section, key = moved[old]
        current = out.get(section, {})
        if not isinstance(current, dict):
            continue  # _apply refuses the section itself
        if key in current:
            raise SymphonyError(f"config sets both 'memory.{old}' and its new name 'memory.{section}.{key}'; "
                                f"keep 'memory.{section}.{key}'")
        out[section] = {**current, key: value}
    return out


def _known(obj: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that `obj` (a config dataclass) has, in its nested sections too."""
    names = {f.name for f in dataclasses.fields(obj)}
    out = {}
    for key, value in data.items():
        if key not in names:
            continue
        if dataclasses.is_dataclass(getattr(obj, key)):
            if isinstance(value, dict):
                out[key] = _known(getattr(obj, key), value)
        else:
            out[key] = value
    return out


def recorded_memory_config(recorded: dict[str, Any], base: MemoryConfig | None = None) -> MemoryConfig:
    """The memory config a run manifest or checkpoint records (its `config.memory`), whichever version wrote it:
    old flat keys are read under their new names; a key a kind added later is what that kind was built with
    before (its `built_before`); any other key the record lacks is `base`'s (default: the default); keys this
    version does not know are ignored. `checkpoint` is left empty: a record says what was built, not what to load."""
    out = copy.deepcopy(base) if base is not None else MemoryConfig()
    out.checkpoint = ""
    if not recorded:
        return out
    data = _moved_memory_keys(dict(recorded))
    for kind in KINDS.values():
        section = data.get(kind.name)
        data[kind.name] = {**kind.built_before, **(section if isinstance(section, dict) else {})}
    data.pop("checkpoint", None)
    _apply(out, _known(out, data), prefix="memory.")
    return out


def flat_memory_dict(mem: MemoryConfig) -> dict[str, Any]:
    """`mem` as one flat mapping, each kind's settings under the flat names runs recorded before kinds had
    sections (titans_pages, holo_dim), a later key as `<kind>.<key>`. Phase 2's fingerprint hashes this, so a
    run made before keeps its fingerprint."""
    out = {}
    for key, value in dataclasses.asdict(mem).items():
        kind = KINDS.get(key)
        if kind is None or not isinstance(value, dict):
            out[key] = value
            continue
        old_name = {new: old for old, new in kind.renamed.items()}
        out.update({old_name.get(k, f"{key}.{k}"): v for k, v in value.items()})
    return out


TASKS = ("lm", "needle", "multikey", "passkey", "kv", "copy", "paraphrase")


@dataclass
class DataConfig:
    """Phase 3's training data: long documents plus synthetic long-range tasks (deterministic by `seed`)."""

    source: str = "builtin"  # haystack/document text: builtin | path to a text file | datasets name
    lengths: str = "1024,2048"  # sample lengths in tokens, comma-separated (samples cycle through them)
    train_samples: int = 64
    dev_samples: int = 8
    tasks: str = "lm,needle,multikey,passkey,kv,copy,paraphrase"  # the mix, cycled: lm = plain long document
    distractors: int = 3  # other keys planted beside the asked one (multikey, kv)


@dataclass
class TrainConfig:
    """Phases 4-7: one training loop; `--set train.max_steps=N` caps every phase (e.g. for smoke runs)."""

    max_steps: int = 0  # >0: at most this many optimizer steps in every training phase
    phase4_steps: int = 200  # coarse pre-training of the FHRR/Titans adapters (LM loss on long documents)
    phase5_steps: int = 200  # HEP-DNA: salience router + copy head on the synthetic tasks
    retriever_steps: int = 300  # HEP-DNA retriever (phase 5, when memory.retriever_dim > 0): projection steps
    phase6_steps: int = 100  # long-range calibration, per curriculum stage
    phase7_steps: int = 200  # joint fine-tuning of every memory part
    curriculum: str = "1024,2048"  # phase 6: sample lengths of the stages, in order
    lr: float = 1e-3
    batch_size: int = 1  # samples per micro-batch (streamed one after another; memory states are per sample)
    grad_accum: int = 1  # micro-batches per optimizer step
    tbptt_segments: int = 2  # segments per backward: the memory's gradient reaches this many segments back
    checkpoint_every: int = 50  # optimizer steps between atomic checkpoints (resume point)
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate; GPU)
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dev_every: int = 0  # phase 6: steps between dev evaluations inside a stage (0: at the end of each stage)


@dataclass
class SymphonyConfig:
    preset: str = "custom"
    seed: int = 0
    artifacts_dir: str = ""  # empty: $SYMPHONY_HOME or ~/.cache/symphony
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    salience: SalienceConfig = field(default_factory=SalienceConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def artifacts_path(self) -> Path:
        return Path(self.artifacts_dir).expanduser() if self.artifacts_dir else symphony_home()


def symphony_home() -> Path:
    return Path(os.environ.get("SYMPHONY_HOME", "~/.cache/symphony")).expanduser()


def configs_dir() -> Path:
    env = os.environ.get("SYMPHONY_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    d = configs_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise SymphonyError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    if isinstance(obj, MemoryConfig):
        data = _moved_memory_keys(data)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in fields:
            raise SymphonyError(
                f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(prefix + k for k in fields)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, prefix=f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, current, f"{prefix}{key}"))


def _coerce(value: Any, current: Any, name: str) -> Any:
    target = type(current)
    if isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    try:
        if target is bool:
            if isinstance(value, int) and value in (0, 1):  # `--set key=1` reaches here as YAML int 1
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                return value.lower() in ("true", "on", "1", "yes")
            raise ValueError
        if target is str and isinstance(value, bool):
            return "on" if value else "off"  # YAML reads a bare off/no/false as a bool: `memory.retriever=off`
        if target in (int, float) and isinstance(value, bool):
            raise ValueError  # int(True) == 1: `cache.window=true` must not silently mean 1
        if target is int and isinstance(value, float):
            if value.is_integer():
                return int(value)
            raise ValueError  # int(2.5) == 2: never truncate silently
        if target in (int, float, str):
            return target(value)
    except (TypeError, ValueError):
        pass
    raise SymphonyError(f"config key '{name}' expects {target.__name__}, got {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SymphonyError(f"--set expects key=value (e.g. cache.window=2048), got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SymphonyConfig:
    """Build a config from a preset name or YAML path plus `key=value` overrides."""
    cfg = SymphonyConfig()
    name_or_path = name_or_path or "smollm2-135m"
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SymphonyError(f"config file not found: {path}")
        preset = path.stem
    else:
        path = configs_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SymphonyError(
                f"unknown config preset '{name_or_path}'; presets: {', '.join(preset_names()) or '(none found)'}"
                " (or pass a path to a YAML file)"
            )
        preset = name_or_path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise SymphonyError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        raise SymphonyError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise SymphonyError(f"cannot read config file {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise SymphonyError(f"config file {path} must be a YAML mapping of sections (model:, cache:, ...); "
                            f"it holds a {type(data).__name__}")
    data.setdefault("preset", preset)
    _apply(cfg, data)
    for item in overrides:
        key, value = parse_override(item)
        _apply(cfg, _nest(key, value))
    validate(cfg)
    return cfg


def validate(cfg: SymphonyConfig) -> None:
    from symphony.runtime.policies import POLICIES  # the registry, which imports no torch

    choices = {
        "model.dtype": (cfg.model.dtype, ("float32", "bfloat16", "float16", "auto")),
        "model.device": (cfg.model.device, ("cpu", "cuda", "auto")),
        "model.quantization": (cfg.model.quantization, ("none", "4bit", "8bit")),
        "cache.policy": (cfg.cache.policy, tuple(POLICIES)),
        "memory.kind": (cfg.memory.kind, kind_names()),
        "train.mixed_precision": (cfg.train.mixed_precision, ("no", "bf16", "fp16")),
        "train.optimizer": (cfg.train.optimizer, ("adamw", "adamw8bit")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise SymphonyError(f"config key '{key}' must be one of {', '.join(allowed)}; got '{value}'")
    # (section, smallest allowed value, keys): counts that a zero or negative value would break later
    minimums = (
        ("cache", 0, ("sinks", "ledger", "recall_budget")),
        ("cache", 1, ("window", "segment_len", "span_len")),
        ("salience", 0, ("smooth_radius",)),
        ("salience", 1, ("ngram",)),
        ("calibration", 1, ("tokens", "segment_len")),
        ("memory", 0, ("heads", "persistent_tokens", "retriever_dim")),
        ("memory", 1, ("chunk_size", "num_tasks")),
        # each memory kind's settings, by the smallest value their fields declare (symphony/memory/kinds.py)
        *((f"memory.{name}", f.metadata["min"], (f.name,)) for name in KINDS if hasattr(cfg.memory, name)
          for f in dataclasses.fields(getattr(cfg.memory, name)) if "min" in f.metadata),
        ("data", 0, ("distractors",)),
        ("data", 1, ("train_samples", "dev_samples")),
        ("train", 0, ("max_steps", "dev_every")),
        ("train", 1, ("phase4_steps", "phase5_steps", "phase6_steps", "phase7_steps", "retriever_steps", "batch_size",
                      "grad_accum", "tbptt_segments", "checkpoint_every")),
    )
    for section, least, keys in minimums:
        for key in keys:
            value = getattr(_section(cfg, section), key)
            if value < least:
                what = "positive or 0" if least == 0 else "positive" if least == 1 else f"at least {least}"
                raise SymphonyError(f"config key '{section}.{key}' must be {what}; got {value}")
    c, m, s = cfg.cache, cfg.memory, cfg.salience
    if not MIN_TABLE_BITS <= s.novelty_table_bits <= MAX_TABLE_BITS:  # the table holds 2**bits flags
        raise SymphonyError(f"config key 'salience.novelty_table_bits' must be between {MIN_TABLE_BITS} and "
                            f"{MAX_TABLE_BITS} (a table of 2**bits entries); got {s.novelty_table_bits}")
    for key in ("surprisal_weight", "novelty_weight"):
        if not math.isfinite(getattr(s, key)):
            raise SymphonyError(f"config key 'salience.{key}' must be a finite number; got {getattr(s, key)}")
    if m.retriever not in ("auto", "off") and not Path(m.retriever).expanduser().is_file():
        raise SymphonyError(f"config key 'memory.retriever' must be auto, off or a retriever file (.safetensors);"
                            f" {m.retriever} is not a file")
    if not math.isfinite(m.gate_init):
        raise SymphonyError(f"config key 'memory.gate_init' must be a finite number; got {m.gate_init}")
    _validate_recall(c)
    if c.recall_copy < 0:
        raise SymphonyError(f"config key 'cache.recall_copy' must be 0 (off) or a number of tokens; got {c.recall_copy}")
    if c.recall_hops < 0:
        raise SymphonyError(f"config key 'cache.recall_hops' must be 0 (no hops) or more; got {c.recall_hops}")
    if not 0 <= c.recall_min_gain <= 1:
        raise SymphonyError(f"config key 'cache.recall_min_gain' must be between 0 and 1; got {c.recall_min_gain}")
    parse_layer_spec(m.layers)
    unknown = [t for t in parse_list(cfg.data.tasks, "data.tasks") if t not in TASKS]
    if unknown:
        raise SymphonyError(f"config key 'data.tasks' has unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    for key in ("lengths",):
        parse_int_list(getattr(cfg.data, key), f"data.{key}")
    parse_int_list(cfg.train.curriculum, "train.curriculum")
    t = cfg.train
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise SymphonyError(f"config key 'train.lr' must be a positive number; got {t.lr}")


def _validate_recall(c: CacheConfig) -> None:
    if c.recall_tokens < -1:
        raise SymphonyError(f"config key 'cache.recall_tokens' must be positive or 0 (off), or -1 to size the recall"
                            f" archive by cache.recall_bytes; got {c.recall_tokens}")
    try:
        size = parse_size(c.recall_bytes)
    except SymphonyError:
        raise SymphonyError(f"config key 'cache.recall_bytes' must be a size such as 8MB, 512KB or a number of bytes"
                            f" (0 = off); got '{c.recall_bytes}'") from None
    span = recall_span_nbytes(c.span_len)
    if c.recall_tokens < 0 and 0 < size < span:
        raise SymphonyError(f"config key 'cache.recall_bytes' must be 0 (off) or hold at least one span ({span} B at"
                            f" span_len {c.span_len}); got '{c.recall_bytes}'")
    if c.recall_path and c.recall_spans() > 0:  # refused now, in one line, not after the model has loaded
        ensure_writable_dir(c.recall_path, what="cache.recall_path")


def _section(cfg: SymphonyConfig, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def parse_list(text: str, key: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise SymphonyError(f"config key '{key}' must be a non-empty comma-separated list; got '{text}'")
    return items


def parse_int_list(text: str, key: str) -> list[int]:
    """'1024,2048' or '1k,2k' -> [1024, 2048]; each a positive token count."""
    out = []
    for part in parse_list(text, key):
        p = part.lower()
        try:
            n = int(float(p[:-1]) * 1024) if p.endswith("k") else int(p)
        except ValueError:
            n = 0
        if n <= 0:
            raise SymphonyError(f"config key '{key}' must list positive token counts like 1024,2048; got '{text}'")
        out.append(n)
    return out


_LAYERS_HELP = "all, last:N, first:N or a comma list of layer indices such as 0,3,5"


def parse_layer_spec(spec: str, num_layers: int | None = None) -> list[int]:
    """`memory.layers` -> sorted layer indices. Checks the syntax; with `num_layers`, also the range."""
    text = str(spec).strip().lower()

    def bad(why: str = "") -> SymphonyError:
        return SymphonyError(f"config key 'memory.layers' must be {_LAYERS_HELP}; got '{spec}'{why}")

    if text == "all":
        return list(range(num_layers)) if num_layers is not None else []
    if text.startswith(("last:", "first:")):
        head, _, count = text.partition(":")
        if not count.strip().isdigit() or int(count) < 1:
            raise bad()
        n = int(count)
        if num_layers is None:
            return []
        if n > num_layers:
            raise bad(f" (the model has {num_layers} layers)")
        return list(range(num_layers - n, num_layers)) if head == "last" else list(range(n))
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p.lstrip("-").isdigit() for p in parts):
        raise bad()
    idx = [int(p) for p in parts]
    if num_layers is None:
        return []
    out = set()
    for i in idx:
        if not -num_layers <= i < num_layers:
            raise bad(f" (layer {i} does not exist: the model has {num_layers} layers, 0-{num_layers - 1})")
        out.add(i % num_layers)
    if len(out) != len(idx):
        raise bad(" (a layer is listed twice)")
    return sorted(out)
