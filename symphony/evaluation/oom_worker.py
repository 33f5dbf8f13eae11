"""One OOM-stress measurement in a fresh process: `python -m symphony.evaluation.oom_worker`.

Reads a JSON spec from argv[1] (or stdin), `method` naming a cache policy (`symphony.runtime.policies`):

    {"config": SymphonyConfig.to_dict(), "method": "symphony", "length": 4096, "decode_tokens": 16}

loads the model, streams `length` tokens of the built-in corpus through the engine, decodes
`decode_tokens` tokens greedily, and prints one JSON line on stdout:

    {"status": "ok", "peak_mem_bytes": ..., "cache_bytes": ..., "ingest_tok_s": ..., "decode_ms_per_tok": ..., ...}

`peak_mem_bytes` is the whole worker's peak: CUDA peak allocated (reset at start) on GPU; on CPU the
peak resident set size of this process image (Linux: VmHWM; `ru_maxrss` would not do, as it starts at
the *parent's* peak: the kernel carries it across fork/exec). Both include the weights.
`stream_peak_bytes` is the peak from the end of loading on (ingest + decode only, weights included), so a
loading transient cannot hide how the streaming itself grows. Run with MALLOC_MMAP_THRESHOLD_=1048576
(the parent sets it) so freed large blocks go back to the OS.
A crash (an out-of-memory kill included) leaves no JSON line; the parent records it as `failed`.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def config_from_dict(data: dict):
    """A SymphonyConfig from its `to_dict()` form (validated like a preset)."""
    from symphony.config import SymphonyConfig, _apply, validate

    cfg = SymphonyConfig()
    _apply(cfg, data)
    validate(cfg)
    return cfg


def rss_peak_bytes() -> int | None:
    """Peak RSS of this process image (Linux), or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_rss_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def corpus_ids(tokenizer, length: int) -> list[int]:
    """`token_stream(tokenizer, builtin_text(), length)`, tokenising only as much of the text as needed
    (the whole corpus at once is a transient of up to ~100 MB that would dominate a small model's peak)."""
    from symphony.corpus import builtin_text, token_stream

    text = builtin_text()
    chars = 5 * length + 4096
    while chars < len(text):
        ids = tokenizer(text[:chars], add_special_tokens=False).input_ids
        if len(ids) >= length + 64:  # margin: only the last words before the cut can tokenise differently
            return ids[:length]
        chars *= 2
    return token_stream(tokenizer, text, length)


def measure(spec: dict) -> dict:
    import torch

    from symphony.runtime.engine import engine_from_config
    from symphony.runtime.stream import peak_memory_bytes
    from symphony.models.loading import resolve_device

    cfg = config_from_dict(spec["config"])
    method, length, n_decode = spec["method"], int(spec["length"]), int(spec.get("decode_tokens", 16))
    device = resolve_device(cfg.model.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def peak() -> int:
        return (rss_peak_bytes() if not cuda else None) or peak_memory_bytes(device)

    t0 = time.perf_counter()
    engine = engine_from_config(cfg, policy=method, progress=False)
    load_s = time.perf_counter() - t0
    ids = torch.tensor(corpus_ids(engine.tokenizer, length), dtype=torch.long)
    stream = engine.new_stream()
    load_peak = peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        stream_peak_ok = True
    else:
        stream_peak_ok = reset_rss_peak() and rss_peak_bytes() is not None

    sync()
    t0 = time.perf_counter()
    engine.ingest(stream, ids)
    sync()
    ingest_s = time.perf_counter() - t0
    cache_bytes, cache_slots, tokens_seen = stream.nbytes(), stream.occupied, stream.tokens_seen

    decode_ms = None
    if n_decode > 0:
        t0 = time.perf_counter()
        out = engine.decode(stream, n_decode, stop_ids=[])
        sync()
        decode_ms = (time.perf_counter() - t0) * 1000 / max(1, len(out))

    stream_peak = peak()
    return {
        "status": "ok",
        "peak_mem_bytes": max(load_peak, stream_peak),
        "stream_peak_bytes": stream_peak if stream_peak_ok else None,
        "cache_bytes": int(cache_bytes),
        "ingest_tok_s": length / ingest_s if ingest_s > 0 else None,
        "decode_ms_per_tok": decode_ms,
        "ingest_s": ingest_s,
        "load_s": load_s,
        "tokens_seen": tokens_seen,
        "cache_slots": int(cache_slots),
        "device": str(engine.device),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0] if argv else sys.stdin.read())
    _quiet()
    result = measure(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
