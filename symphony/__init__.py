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
    "generate": "symphony.integrations.generate",
    "SymphonyPipeline": "symphony.integrations.pipeline",
}
__all__ = sorted(_PUBLIC)


def lazy_exports(package: str, public: dict[str, str]):
    """A module `__getattr__` that imports each public name from its module on first use."""

    def __getattr__(name: str):
        if name in public:
            import importlib

            return getattr(importlib.import_module(public[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _PUBLIC)
