"""Load any decoder-only causal LM: embedded preset, tiny test model, local dir, GGUF file or hub id."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from symphony.config import ModelConfig
from symphony.errors import SymphonyError
from symphony.models.embedded import EMBEDDED_ALIASES, ensure_embedded_model
from symphony.models.tiny import TINY_MODELS, byte_tokenizer, tiny_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NO_NETWORK = "no network: pass a local directory or use the embedded model (--set model.name=smollm2-135m)"


@dataclass
class ModelSource:
    kind: str  # embedded | tiny | dir | gguf | hub
    location: str  # what from_pretrained receives (or the tiny model's name)
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    device: torch.device
    dtype: torch.dtype


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SymphonyError("device 'cuda' requested but no CUDA GPU is available; use --set model.device=cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise SymphonyError(f"unknown dtype '{dtype}'; choose float32, bfloat16, float16 or auto")
    return DTYPES[dtype]


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or os.sep + os.sep in name


def resolve_source(name: str) -> ModelSource:
    if name in EMBEDDED_ALIASES:
        return ModelSource("embedded", str(ensure_embedded_model()))
    if name in TINY_MODELS:
        return ModelSource("tiny", name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SymphonyError(f"model directory {path} has no config.json; is it a transformers checkpoint?")
        return ModelSource("dir", str(path))
    if _looks_like_path(name) or path.exists():
        raise SymphonyError(f"model path not found: {name}")
    if name.count("/") != 1:
        raise SymphonyError(
            f"'{name}' is neither a local path nor a hub id (owner/name); embedded: {EMBEDDED_ALIASES[0]},"
            f" test models: {', '.join(TINY_MODELS)}"
        )
    return ModelSource("hub", name)


# Encoders that transformers can also run with an LM head (BertLMHeadModel, ...): not decoder-only models.
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "ernie", "rembert",
                  "roc_bert", "roberta-prelayernorm", "data2vec-text", "megatron-bert", "big_bird", "xmod",
                  "bert-generation", "qdqbert"}


def _check_causal_lm(config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    encoder = config.model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False)
    if encoder or getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SymphonyError(
            f"model type '{config.model_type}' is not a decoder-only causal LM; Symphony needs one (Llama, Qwen2, Mistral, ...)"
        )


def load_config_only(source: ModelSource, trust_remote_code: bool = False):
    """The model's transformers config, without loading weights (used by `info` and `plan`)."""
    from transformers import AutoConfig

    if source.kind == "tiny":
        from symphony.models.tiny import tiny_config

        return tiny_config(source.location)
    try:
        return AutoConfig.from_pretrained(
            source.location,
            gguf_file=source.gguf_file,
            trust_remote_code=trust_remote_code,
            local_files_only=True,  # the hub is asked only after a quick reachability check
        )
    except OSError as e:
        if source.kind == "hub":
            return _hub_config_online(source, trust_remote_code, e)
        raise SymphonyError(f"cannot read the model config at {source.location}: {str(e).splitlines()[0]}") from None
    except (ValueError, KeyError, RuntimeError, EOFError) as e:  # what the config and GGUF readers raise on bad bytes
        raise _damaged(source, e) from None


def _damaged(source: ModelSource, e: Exception) -> SymphonyError:
    """One line for model files that exist but cannot be read (truncated download, corrupt GGUF)."""
    where = source.location + (f"/{source.gguf_file}" if source.gguf_file else "")
    why = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
    fix = (f"delete {source.location} and run again (it is converted anew)" if source.kind == "embedded"
           else "download or convert it again")
    return SymphonyError(f"the model files at {where} are damaged or not a model ({why}); {fix}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP check, so an offline machine fails in milliseconds instead of after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_config_online(source: ModelSource, trust_remote_code: bool, first_error: Exception):
    from transformers import AutoConfig

    if _offline():
        raise SymphonyError(f"'{source.location}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {NO_NETWORK}") from None
    if not hub_reachable():
        raise SymphonyError(f"'{source.location}' is not in the local Hugging Face cache; {NO_NETWORK}") from None
    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except OSError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "not a valid model identifier" in msg or "404" in msg:
            raise SymphonyError(f"hub model '{source.location}' does not exist (or is private)") from None
        raise SymphonyError(f"cannot reach the hub for '{source.location}' ({msg[:120]}); {NO_NETWORK}") from None


# exception types the weight readers raise on truncated or corrupt files (by name: their modules are optional)
_DAMAGED_FILE_ERRORS = {"SafetensorError", "HeaderTooLarge", "ValueError", "EOFError", "UnpicklingError", "KeyError",
                        "RuntimeError"}


def load_model(spec: ModelConfig, seed: int = 0) -> LoadedModel:
    """Load model + tokenizer, eval mode, on the requested device/dtype/quantisation."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = resolve_source(spec.name)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if source.kind == "tiny":
        if spec.quantization != "none":
            raise SymphonyError("tiny test models are not quantised; use --set model.quantization=none")
        model = tiny_model(source.location, seed=seed, dtype=dtype).to(device)
        return LoadedModel(model, byte_tokenizer(), source, device, dtype)

    config = load_config_only(source, spec.trust_remote_code)
    _check_causal_lm(config)
    kwargs: dict[str, Any] = dict(dtype=dtype, trust_remote_code=spec.trust_remote_code)
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if spec.quantization != "none":
        compute = dtype if dtype != torch.float32 else torch.bfloat16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
            if spec.quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    local_only = _local_only(source)
    tokenizer = _auto_tokenizer(source, spec.trust_remote_code, local_only)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, local_files_only=local_only, **kwargs)
    except OSError as e:
        if source.kind == "hub":
            raise SymphonyError(f"cannot load '{source.location}' ({str(e).splitlines()[0][:120]}); {NO_NETWORK}") from None
        raise SymphonyError(f"cannot load the model at {source.location}: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise SymphonyError(f"missing package for this model: {e}") from None
    except Exception as e:  # noqa: BLE001 - safetensors, gguf and torch each raise their own types on bad bytes
        if isinstance(e, SymphonyError) or type(e).__name__ not in _DAMAGED_FILE_ERRORS:
            raise
        raise _damaged(source, e) from None
    if spec.quantization == "none":
        model = model.to(device)
    return LoadedModel(model.eval(), tokenizer, source, device, dtype)


def freeze(model) -> int:
    """Freeze every parameter; returns how many parameters were frozen."""
    n = 0
    for p in model.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def load_tokenizer(spec: ModelConfig):
    """The model's tokenizer only (no weights): the byte tokenizer for tiny models, else AutoTokenizer."""
    source = resolve_source(spec.name)
    if source.kind == "tiny":
        return byte_tokenizer()
    return _auto_tokenizer(source, spec.trust_remote_code, _local_only(source))


def _local_only(source: ModelSource) -> bool:
    """Load from local files only: local dirs, offline mode, or a hub id already in the HF cache."""
    return source.kind != "hub" or _offline() or _in_hf_cache(source.location)


def _auto_tokenizer(source: ModelSource, trust_remote_code: bool, local_only: bool):
    """AutoTokenizer for a resolved (non-tiny) source, with one-line errors."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source.location, gguf_file=source.gguf_file, local_files_only=local_only,
            trust_remote_code=trust_remote_code,
        )
    except OSError as e:
        if source.kind == "hub":
            why = str(e).splitlines()[0][:120]
            raise SymphonyError(f"cannot load the tokenizer of '{source.location}' ({why}); {NO_NETWORK}") from None
        raise SymphonyError(f"cannot load the tokenizer at {source.location}: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise SymphonyError(f"missing package for this tokenizer: {e}") from None
