"""Symphony behind the interfaces users already know: `symphony.generate(model, tokenizer, text, **kwargs)` (shaped
like `model.generate`) and `SymphonyPipeline`, a transformers pipeline (kvpress's `pipe(context, question=...)`),
both over a model and tokenizer the user has already loaded.

Importing this package registers the pipeline as task "symphony-text-generation", so
`transformers.pipeline("symphony-text-generation", model=model, tokenizer=tokenizer)` builds it.
"""
from symphony.integrations.pipeline import SymphonyPipeline

__all__ = ["SymphonyPipeline"]
