"""Phase 2 logic: attach zero-gated memory adapters to the frozen model and prove they change nothing.

Reads phase 1's manifest (the model and calibration recipe it froze), loads and freezes the model,
runs calibration text through it, injects the adapters configured by `memory.*`, runs the same text
again and requires bit-equal logits (torch.equal). Writes DIR/phase2/adapters.safetensors and
DIR/phase2/manifest.json (written last: its presence means the phase is complete).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from symphony.models.info import decoder_layers
from symphony.config import SymphonyConfig, flat_memory_dict, parse_layer_spec
from symphony.corpus import load_text, token_stream
from symphony.errors import SymphonyError
from symphony.pipeline.freeze import phase1_fingerprint
from symphony.memory.checkpoint import ADAPTERS_FILE, save_adapters
from symphony.memory.inject import adapter_parameters, count_trainable, inject, pointer_heads, reset_memory_states
from symphony.models import freeze, load_model
from symphony.models.compat import with_cache
from symphony.pipeline.runs import PhaseRun, fingerprint, make_manifest, phase_command, read_manifest

VERIFY_TOKENS = 512  # at most this many calibration tokens are compared
VERIFY_SEGMENT = 256  # at most this many per forward: the memory state carries across segments


def phase2_fingerprint(cfg: SymphonyConfig) -> str:
    # flat, in the key names runs were made with before kinds had sections: their phase 2 stays up to date
    memory = {k: v for k, v in flat_memory_dict(cfg.memory).items()
              if k not in ("checkpoint", "retriever")}  # what to load, not build
    if not cfg.memory.retriever_dim:  # built without a retriever: the fingerprint runs made before it had
        memory = {k: v for k, v in memory.items() if k not in ("retriever_dim", "retriever_layer")}
    return fingerprint({"phase1": phase1_fingerprint(cfg), "memory": memory, "seed": cfg.seed})


@torch.no_grad()
def segment_logits(model, ids: list[int], segment_len: int, progress: bool = False,
                   desc: str = "") -> list[torch.Tensor]:
    """Logits of `ids` fed in segments through one DynamicCache (as a stream is), each segment's on the CPU."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    out = []
    starts = range(0, len(ids), segment_len)
    for s in tqdm(starts, desc=desc, unit="seg", disable=not progress):
        chunk = torch.tensor([ids[s:s + segment_len]], device=device)
        out.append(model(**with_cache(model, cache, input_ids=chunk, use_cache=True)).logits[0].cpu())
    return out


def compare_logits(base: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[bool, float]:
    """(bit-equal, max |difference|) over all segments."""
    equal = len(base) == len(other) and all(torch.equal(a, b) for a, b in zip(base, other))
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in zip(base, other) if a.numel()), default=0.0)
    return equal, diff


def run_inject(cfg: SymphonyConfig, run_dir: str | Path, force: bool = False, progress: bool = True) -> dict:
    phase1 = read_manifest(run_dir, 1, needed_by=2, config=cfg)
    if phase1.get("fingerprint") != phase1_fingerprint(cfg):
        raise SymphonyError(
            f"phase 1 in {run_dir} was made with a different model/calibration config than this one; use the"
            f" same -c/--set options as phase 1, or redo it: {phase_command(run_dir, 1, cfg, force=True)}"
        )
    fp = phase2_fingerprint(cfg)
    run = PhaseRun(run_dir, 2, fp, "a different memory/model config", cfg, files=(ADAPTERS_FILE,))
    if (done := run.up_to_date(force)) is not None:
        return done
    if cfg.memory.gate_init != 0.0:
        raise SymphonyError(
            f"phase 2 attaches adapters with a zero gate and proves the model unchanged; "
            f"config key 'memory.gate_init' must be 0.0 here (got {cfg.memory.gate_init})"
        )

    n_layers = (phase1.get("model") or {}).get("num_layers")
    if isinstance(n_layers, int) and cfg.memory.kind != "none":
        parse_layer_spec(cfg.memory.layers, n_layers)  # a bad layer list fails before the model loads

    loaded = load_model(cfg.model, seed=cfg.seed)
    model = loaded.model
    freeze(model)
    n_layers = len(decoder_layers(model))
    layers = parse_layer_spec(cfg.memory.layers, n_layers) if cfg.memory.kind != "none" else []

    n_tokens = max(1, min(cfg.calibration.tokens, VERIFY_TOKENS))
    segment = max(1, min(cfg.calibration.segment_len, VERIFY_SEGMENT, (n_tokens + 1) // 2))
    ids = token_stream(loaded.tokenizer, load_text(cfg.calibration.text), n_tokens)
    base = segment_logits(model, ids, segment, progress, "base logits")

    adapters = inject(model, cfg.memory, seed=cfg.seed)
    trainable = count_trainable(model)
    own = {id(p) for p in adapter_parameters(model)}
    base_params = [p for p in model.parameters() if id(p) not in own]
    if any(p.requires_grad for p in base_params):
        raise RuntimeError("inject left a base-model parameter trainable")
    reset_memory_states(model)
    injected = segment_logits(model, ids, segment, progress, "injected logits")
    reset_memory_states(model)
    equal, max_diff = compare_logits(base, injected)
    if not equal:
        raise SymphonyError(
            f"the injected model's logits differ from the base model's (max abs diff {max_diff:.3g}) although every"
            " gate is 0; nothing was written. This is a bug: please report it with the config"
        )

    body = {
        "name": "inject",
        "fingerprint": fp,
        "phase1_fingerprint": phase1["fingerprint"],
        "config": cfg.to_dict(),
        "model": {"name": cfg.model.name, "architecture": type(model).__name__, "num_layers": n_layers},
        "memory": {
            "kind": cfg.memory.kind,
            "pointer": cfg.memory.pointer,
            "layers": layers,
            "adapters": len(adapters),
            "state_bytes_per_stream": sum(a.state_nbytes(1) for a in adapters),
            "pointer_parameters": sum(p.numel() for p in pointer_heads(model).parameters())
            if pointer_heads(model) is not None else 0,
        },
        "parameters": {"trainable": trainable, "adapter_total": sum(p.numel() for p in adapter_parameters(model)),
                       "base_frozen": sum(p.numel() for p in base_params)},
        "verification": {"tokens": len(ids), "segment_len": segment, "text": cfg.calibration.text},
        "logits_equal": equal,
        "max_abs_diff": max_diff,
    }
    with run.stage() as stage:
        save_adapters(model, stage, make_manifest(2, body))
    return run.result()


def summary_lines(result: dict) -> list[str]:
    """What `run-phase 2` prints under its status line."""
    m = result["memory"]
    what = f"{m['kind']} on layers {','.join(map(str, m['layers']))}" if m["kind"] != "none" else "no memory"
    pointer = " + pointer heads" if m["pointer"] else ""
    lines = [f"{what}{pointer}: {result['parameters']['trainable']:,} trainable parameters;"
             f" logits equal to the base: {str(result['logits_equal']).lower()}"
             f" (max abs diff {result['max_abs_diff']:.3g} over {result['verification']['tokens']} tokens)"]
    if m["kind"] == "none" and not m["pointer"]:
        lines.append("(memory.kind is none: add --set memory.kind=fhrr or titans to inject a memory)")
    return lines
