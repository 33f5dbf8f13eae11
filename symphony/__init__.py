"""Symphony: constant-memory long-context streaming for Hugging Face causal LMs.

    from symphony import load_config, engine_from_config, ChatSession
    engine = engine_from_config(load_config("smollm2-135m"))
    print(ChatSession(engine).say("Hello!"))
"""

__version__ = "0.1.0"

# the public API, imported on first use so that `import symphony` stays cheap (torch loads only when needed)
_PUBLIC = {
    "load_config": "symphony.config",
    "engine_from_config": "symphony.runtime.engine",
    "StreamingEngine": "symphony.runtime.engine",
    "ChatSession": "symphony.runtime.chat",
    "SymphonyModel": "symphony.runtime.model",
    "BoundedCache": "symphony.runtime.cache",
    "SymphonyError": "symphony.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'symphony' has no attribute {name!r}")
