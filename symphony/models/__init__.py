"""Model loading (embedded preset, tiny test models, local dirs, GGUF, hub ids) and model facts."""
from symphony.models.info import context_window, kv_bytes_per_token, parameter_counts
from symphony.models.loading import LoadedModel, freeze, load_config_only, load_model, resolve_source

__all__ = [
    "LoadedModel", "context_window", "freeze", "kv_bytes_per_token", "load_config_only", "load_model",
    "parameter_counts", "resolve_source",
]
