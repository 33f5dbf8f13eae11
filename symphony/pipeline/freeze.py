"""Phase 1 logic: load the base model, freeze it, record calibration statistics, write the manifest."""
from __future__ import annotations

from pathlib import Path

from symphony.pipeline.calibration import calibration_stats
from symphony.config import SymphonyConfig
from symphony.models import freeze, load_model, parameter_counts
from symphony.models.info import context_window, kv_bytes_per_token
from symphony.pipeline.runs import PhaseRun, fingerprint, write_manifest


def phase1_fingerprint(cfg: SymphonyConfig) -> str:
    # only what changes the artifact: the model and the calibration recipe
    return fingerprint({"model": cfg.to_dict()["model"], "calibration": cfg.to_dict()["calibration"], "seed": cfg.seed})


def run_freeze(cfg: SymphonyConfig, run_dir: str | Path, force: bool = False, progress: bool = True) -> dict:
    fp = phase1_fingerprint(cfg)
    run = PhaseRun(run_dir, 1, fp, "a different model/calibration config", cfg)
    if (done := run.up_to_date(force)) is not None:
        return done
    loaded = load_model(cfg.model, seed=cfg.seed)
    model = loaded.model
    n_frozen = freeze(model)
    if any(p.requires_grad for p in model.parameters()):
        raise RuntimeError("freeze failed: a parameter still requires grad")
    stats = calibration_stats(
        model, loaded.tokenizer, cfg.calibration.text, cfg.calibration.tokens, cfg.calibration.segment_len, progress
    )
    body = {
        "name": "freeze",
        "fingerprint": fp,
        "config": cfg.to_dict(),
        "model": {
            "name": cfg.model.name,
            "source": loaded.source.kind,
            "location": loaded.source.location,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "device": str(loaded.device),
            "quantization": cfg.model.quantization,
            "context_window": context_window(model.config),
            "kv_bytes_per_token": kv_bytes_per_token(model.config, model.dtype.itemsize),
            "num_layers": model.config.num_hidden_layers,
        },
        "parameters": {**parameter_counts(model), "frozen": n_frozen},
        "stats": stats,
    }
    with run.stage() as stage:
        write_manifest(run_dir, 1, body, into=stage)
    return run.result()


def summary_lines(result: dict) -> list[str]:
    """What `run-phase 1` prints under its status line."""
    p = result["parameters"]
    return [f"{result['model']['architecture']}: {p['total']:,} parameters, {p['trainable']} trainable;"
            f" calibrated on {result['stats']['tokens']} tokens"]
