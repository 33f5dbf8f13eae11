"""`SymphonyPipeline`: questions about a context of any length, as a transformers pipeline (kvpress's interface).

    import symphony.integrations  # registers the task
    pipe = pipeline("symphony-text-generation", model=model, tokenizer=tokenizer, cache_bytes="90MB")
    pipe(context, question="Who wrote it?")["answer"]
    pipe(context, questions=["Who?", "When?"])["answers"]  # one pass over the context for all of them

or `pipeline("text-generation", model=model, tokenizer=tokenizer, pipeline_class=SymphonyPipeline)`.

The context streams through the chat template into a bounded cache (`StreamingEngine.ingest`, compacting after
every segment: constant memory at any length); each question is then asked as `chat.answer` asks it, with the
archived spans it needs recalled in front of it, and answered greedily. Several questions share one pass over
the context: each is answered from its own copy of the stream as the context left it, so no answer sees another
question. Besides kvpress's "answer" / "answers", the output holds "tokens_seen" (tokens streamed for the
context, template included) and "cache_bytes" (KV bytes the cache holds after the context).
"""
from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from symphony.errors import SymphonyError
from symphony.integrations.generate import BUDGET_KEYS, count_arg, streaming_engine

TASK = "symphony-text-generation"
_ANSWER_KEYS = ("max_new_tokens", "temperature", "top_p")
DEFAULT_NEW_TOKENS = 50  # kvpress's


class SymphonyPipeline(Pipeline):
    """`pipe(context, question=q)` -> {"answer", "tokens_seen", "cache_bytes"}; `pipe(context, questions=[...])` ->
    {"answers": [...], "tokens_seen", "cache_bytes"}. The cache budget (`cache_slots=`, `cache_bytes=`, `window=`,
    `ledger=`, `sinks=`, `segment_len=`, `policy=`, `cache_config=`: see `symphony.integrations.generate
    .cache_config_for`) and `max_new_tokens` (default 50), `temperature`, `top_p` (default greedy) may be given when
    the pipeline is built or per call. `context` is text or a tensor of token ids; a list of contexts is a batch
    (one output each)."""

    def __call__(self, context=None, **kwargs):
        # kvpress documents `pipe(context=..., question=...)`; the base class names its first argument `inputs`
        if context is None:
            context = kwargs.pop("inputs", None)
        if context is None:
            raise SymphonyError("no context: call pipe(context, question=...)")
        return super().__call__(context, **kwargs)

    def _sanitize_parameters(self, question: str | None = None, questions: list[str] | None = None, **kwargs):
        unknown = sorted(set(kwargs) - set(BUDGET_KEYS) - set(_ANSWER_KEYS))
        if unknown:
            raise SymphonyError(f"SymphonyPipeline does not take {', '.join(unknown)}; it takes question, questions, "
                                f"{', '.join(_ANSWER_KEYS)}, {', '.join(BUDGET_KEYS)}")
        if question is not None and questions is not None:
            raise SymphonyError("give question= or questions=, not both")
        if questions is not None and (isinstance(questions, str) or not all(isinstance(q, str) for q in questions)):
            raise SymphonyError("questions= must be a list of strings (question= takes one)")
        preprocess, postprocess = {}, {}
        if question is not None or questions is not None:
            preprocess["questions"] = list(questions) if questions is not None else [question]
            postprocess["single"] = questions is None
        # only what was given, so a call's keywords override the pipeline's one by one
        forward = {k: v for k, v in kwargs.items() if v is not None}
        return preprocess, forward, postprocess

    def preprocess(self, context, questions: tuple[str, ...] = ("",)):
        if isinstance(context, str):
            ids = torch.tensor(self.tokenizer(context, add_special_tokens=False).input_ids)  # as the engine encodes
        elif isinstance(context, torch.Tensor) and not context.is_floating_point() and 1 <= context.dim() <= 2 \
                and context.numel() == context.shape[-1]:
            ids = context
        else:  # (a list is a batch of contexts to the base class, so token ids come as one tensor)
            raise SymphonyError(f"a context is text or a tensor of token ids [n] or [1, n]; got {type(context).__name__}"
                                + (f" of shape {tuple(context.shape)}" if isinstance(context, torch.Tensor) else ""))
        return {"context_ids": ids.long().reshape(-1), "questions": list(questions)}

    def _forward(self, inputs, max_new_tokens: int = DEFAULT_NEW_TOKENS, temperature: float = 0.0,
                 top_p: float = 1.0, **budget):
        count_arg("max_new_tokens", max_new_tokens)
        engine = streaming_engine(self.model, self.tokenizer, **budget)
        context, questions = inputs["context_ids"].cpu(), inputs["questions"]
        stream = engine.new_stream()
        before, after = engine.chat_format.first_user
        engine.ingest(stream, engine.encode(before))
        if context.numel():  # the document opens the user message, as chat.answer streams it
            engine.ingest(stream, context, desc="context")
        tokens_seen, cache_bytes = stream.tokens_seen, stream.nbytes()
        # the stream may point into the model (a learned router scorer): share those modules, copy the stream's state
        shared = {id(m): m for m in self.model.modules()}
        answers = []
        for i, question in enumerate(questions):
            own = stream if i == len(questions) - 1 else copy.deepcopy(stream, dict(shared))
            engine.ask(own, "\n\n" + question if context.numel() else question, after)
            reply = engine.decode(own, max_new_tokens, temperature=temperature, top_p=top_p)
            answers.append(self.tokenizer.decode(reply, skip_special_tokens=True))
        return {"answers": answers, "tokens_seen": tokens_seen, "cache_bytes": cache_bytes}

    def postprocess(self, outputs, single: bool = True):
        stats = {"tokens_seen": outputs["tokens_seen"], "cache_bytes": outputs["cache_bytes"]}
        if single:
            return {"answer": outputs["answers"][0], **stats}
        return {"answers": outputs["answers"], **stats}


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=SymphonyPipeline, pt_model=AutoModelForCausalLM)
