"""GPU check: a randomly initialised model of Qwen2.5-7B-Instruct's shape streamed through `symphony`, `sinks`
and `full` at growing lengths on one CUDA GPU. Prints, per method and length, peak `torch.cuda.max_memory_allocated`,
the non-weight part of it, ingest tokens/s and decode ms/token, and whether the 8 GB preset's budget holds
(weights at NF4 size + the measured non-weight peak <= 8 GiB).

    benchmarks/gpu_check.sh                  # on a CUDA machine: 8k -> 256k (full to 64k), bf16
    benchmarks/gpu_check.sh --dry-run        # anywhere: the tiny model on the CPU, 1k and 2k tokens (seconds)

Needs only torch, transformers (5.17 or newer) and accelerate: the weights are random (the shape decides memory
and speed, not the values) and nothing is downloaded. JSON goes to $OUT (or results/) as gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from symphony.config import load_config
from symphony.evaluation.methods import parse_lengths
from symphony.models.info import kv_bytes_per_token
from symphony.planner import format_size, weight_bytes
from symphony.runtime.engine import StreamingEngine

ROOT = Path(__file__).resolve().parent.parent
QWEN_CONFIG = ROOT / "benchmarks" / "models" / "qwen2.5-7b-instruct" / "config.json"
GIB = 1 << 30


def build_model(dry_run: bool, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    if dry_run:
        from symphony.models.tiny import tiny_model

        return tiny_model("tiny-llama", seed=0, dtype=dtype).to(device).eval()
    config = AutoConfig.for_model(**{k: v for k, v in json.loads(QWEN_CONFIG.read_text()).items()
                                     if k not in ("architectures", "torch_dtype")})
    with torch.device(device):  # initialised in place on the GPU: no 15 GB detour through host memory
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def measure(engine: StreamingEngine, length: int, decode_tokens: int, device: torch.device, seed: int) -> dict:
    vocab = engine.model.config.vocab_size
    ids = torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    stream = engine.new_stream()
    t0 = time.perf_counter()
    with torch.no_grad():
        engine.ingest(stream, ids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.decode(stream, decode_tokens, stop_ids=[])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    decode_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"context_len": length, "ingest_tok_s": length / ingest_s, "decode_ms_per_tok": 1000 * decode_s / decode_tokens,
            "peak_bytes": peak, "cache_slots": stream.occupied, "cache_bytes": stream.nbytes()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU, short lengths (for CI)")
    ap.add_argument("--lengths", default=None, help="e.g. 8k,32k,128k,256k")
    ap.add_argument("--methods", default="symphony,sinks,full")
    ap.add_argument("--full-max", default="64k", help="longest length for `full` (its prefill time is quadratic)")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results"))
    args = ap.parse_args()

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; run with --dry-run to check the script on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    lengths = parse_lengths(args.lengths or ("1k,2k" if args.dry_run else "8k,32k,128k,256k"))
    full_max = parse_lengths(args.full_max)[0]
    cfg = load_config("tiny" if args.dry_run else "qwen2.5-7b-8gb")
    cache_cfg = cfg.cache

    model = build_model(args.dry_run, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel() + (
        0 if model.config.tie_word_embeddings else model.get_output_embeddings().weight.numel())
    weights_now = sum(p.numel() * p.element_size() for p in model.parameters())
    weights_nf4 = weight_bytes(n_params, n_embed, 2, "4bit")
    kv_token = kv_bytes_per_token(model.config, dtype.itemsize)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    print(f"model: {'tiny-llama' if args.dry_run else 'Qwen2.5-7B shape, random weights'}, {n_params / 1e9:.2f}B "
          f"parameters, {dtype}, {format_size(weights_now)} of weights on {device} (NF4 size {format_size(weights_nf4)}); "
          f"KV {format_size(kv_token)}/token; cache budget {cache_cfg.sinks}+{cache_cfg.ledger}+{cache_cfg.window} slots")

    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        engine = StreamingEngine(model, None, cache_cfg, cfg.salience, policy=method)
        for i, n in enumerate(lengths):
            row = {"method": method}
            if method == "full" and n > full_max:
                row.update(context_len=n, status="skipped_time")
            elif method == "full" and free is not None and n * kv_token * 1.3 + weights_now > free:
                row.update(context_len=n, status="over_memory", projected_bytes=int(n * kv_token + weights_now))
            else:
                try:
                    row.update(measure(engine, n, args.decode_tokens, device, seed=i), status="ok")
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row.update(context_len=n, status="oom")
            if row.get("peak_bytes") is not None:
                row["non_weight_peak_bytes"] = row["peak_bytes"] - weights_now
                row["fits_8gb_at_nf4"] = weights_nf4 + row["non_weight_peak_bytes"] <= 8 * GIB
            rows.append(row)
            peak = "-" if row.get("peak_bytes") is None else format_size(row["peak_bytes"])
            extra = "" if row["status"] != "ok" else (
                f"ingest {row['ingest_tok_s']:,.0f} tok/s, decode {row['decode_ms_per_tok']:.1f} ms/tok, "
                f"cache {format_size(row['cache_bytes'])}, peak {peak}"
                + ("" if "fits_8gb_at_nf4" not in row else
                   f", non-weight {format_size(row['non_weight_peak_bytes'])}, 8 GB at NF4: "
                   f"{'fits' if row['fits_8gb_at_nf4'] else 'does NOT fit'}"))
            print(f"{method:>9} {n:>8,}: {row['status']} {extra}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "dry_run": args.dry_run, "weights_bytes": weights_now, "weights_nf4_bytes": weights_nf4,
            "kv_bytes_per_token": kv_token, "cache": vars(cache_cfg)}
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"-> {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
