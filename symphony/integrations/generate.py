"""`symphony.generate(model, tokenizer, text_or_ids, **generate_kwargs)`: `model.generate` for prompts of any length.

    ids = symphony.generate(model, tokenizer, long_text, max_new_tokens=64, streamer=TextStreamer(tokenizer))

The prompt is prefilled `segment_len` tokens at a time through a bounded cache that is compacted after every
segment and every `segment_len` generated tokens (`StreamingEngine.ingest` / `decode`), so KV memory is fixed by
the budget whatever the prompt's length and positions stay inside the model's trained context. With a budget
larger than prompt + output, greedy output equals `model.generate`'s token for token.

Also here: the cache budget keywords shared with `SymphonyPipeline` (`cache_config_for`, `streaming_engine`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from symphony.config import CacheConfig, SymphonyConfig, validate
from symphony.errors import SymphonyError
from symphony.models.info import check_cache_in_context, context_window, highest_position, kv_bytes_per_token
from symphony.runtime.engine import StreamingEngine

# the keywords that choose the cache (generate and the pipeline take the same ones)
BUDGET_KEYS = ("cache_config", "policy", "cache_slots", "cache_bytes", "sinks", "ledger", "window", "segment_len")
DEFAULT_SINKS = 4  # as in every preset; a `cache_slots` budget keeps them and gives the ledger a quarter
# transformers' default length when neither the call nor the generation config sets one; prompts here are long,
# so it counts new tokens (as max_length=20 would leave none)
DEFAULT_NEW_TOKENS = 20


def count_arg(name: str, value: Any, least: int = 0) -> int:
    """`value` if it is a whole number of at least `least`; a one-line SymphonyError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive whole number" if least else "a whole number, 0 or more"
        raise SymphonyError(f"{name} must be {what}; got {value!r}")
    return value


def _split_slots(slots: int, sinks: int | None, ledger: int | None, window: int | None,
                 what: str) -> tuple[int, int, int]:
    """A total of `slots` as (sinks, ledger, window): sinks 4, a quarter ledger, the rest window, unless given."""
    sinks = DEFAULT_SINKS if sinks is None else sinks
    if ledger is None and window is None:
        ledger = slots // 4
    if window is None:
        window = slots - sinks - ledger
    elif ledger is None:
        ledger = slots - sinks - window
    if ledger < 0 or window < 1 or sinks + ledger + window != slots:
        raise SymphonyError(f"{what} cannot hold sinks {sinks} + ledger {ledger} + window {window}: they must add up "
                            f"to {slots} with a window of at least 1; give more slots or drop sinks=/ledger=/window=")
    return sinks, ledger, window


def cache_config_for(model, cache_config: CacheConfig | None = None, policy: str | None = None,
                     cache_slots: int | None = None, cache_bytes: int | float | str | None = None,
                     sinks: int | None = None, ledger: int | None = None, window: int | None = None,
                     segment_len: int | None = None) -> CacheConfig:
    """The cache for `model`: `cache_config` (default: `CacheConfig()`) with the keywords given on top.

    The budget is `cache_slots` (split: sinks 4, ledger a quarter, window the rest; `sinks=`, `ledger=`, `window=`
    move the split), or `cache_bytes` ("90MB", "1.5GiB" or a number; the slots that many bytes of this model's KV
    hold in its dtype), or `sinks=`/`ledger=`/`window=` alone. With no budget at all, the default one is shrunk to
    fit a model whose trained context is shorter. Refuses (one-line SymphonyError) a budget whose positions would
    run past the model's trained context."""
    if cache_config is not None and not isinstance(cache_config, CacheConfig):
        raise SymphonyError(f"cache_config must be a symphony.config.CacheConfig; got {type(cache_config).__name__}")
    if cache_slots is not None and cache_bytes is not None:
        raise SymphonyError("give the budget as cache_slots= or cache_bytes=, not both")
    cfg = dataclasses.replace(cache_config) if cache_config is not None else CacheConfig()
    for name, value in (("sinks", sinks), ("ledger", ledger)):
        if value is not None:
            setattr(cfg, name, count_arg(name, value))
    for name, value in (("window", window), ("segment_len", segment_len)):
        if value is not None:
            setattr(cfg, name, count_arg(name, value, least=1))
    if policy is not None:
        cfg.policy = policy
    validate(SymphonyConfig(cache=cfg))  # policy name, counts: the config's own one-line errors

    what = None
    if cache_bytes is not None:
        from symphony.planner import parse_size

        per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
        cache_slots = parse_size(cache_bytes) // per_token
        what = f"cache_bytes={cache_bytes!r} ({cache_slots} slots of {per_token:,} bytes)"
    elif cache_slots is not None:
        what = f"cache_slots={count_arg('cache_slots', cache_slots, least=1)}"
    elif cache_config is None and sinks is None and ledger is None and window is None:
        limit = context_window(model.config)
        if limit and highest_position(cfg) >= limit:  # the default budget, for a model with a short context
            cache_slots = max(limit - cfg.segment_len, 0)
            what = f"the {limit:,}-token context of this model less segment_len {cfg.segment_len}"
    if what is not None:
        cfg.sinks, cfg.ledger, cfg.window = _split_slots(cache_slots, sinks, ledger, window, what)
    from symphony.runtime.policies import get_policy

    if get_policy(cfg.policy).bounded:
        limit = context_window(model.config)
        check_cache_in_context(cfg, model.config, advice=f"give cache_slots={max(limit - cfg.segment_len, 0)} or less"
                                                         " (or a smaller segment_len=)")
    return cfg


def streaming_engine(model, tokenizer, **budget) -> StreamingEngine:
    """A `StreamingEngine` over the user's model and tokenizer with the cache `budget` describes (`BUDGET_KEYS`)."""
    cfg = cache_config_for(model, **budget)
    return StreamingEngine(model, tokenizer, cfg, policy=cfg.policy)


class _Stop(Exception):
    """Raised from the token callback at an end-of-sequence token: the engine's own stop check drops the stop token,
    but `model.generate` returns it (and hands it to the streamer), so the stop is decided here instead."""


def _prompt_ids(tokenizer, text_or_ids, input_ids, attention_mask) -> torch.Tensor:
    if text_or_ids is not None and input_ids is not None:
        raise SymphonyError("give the prompt once: as text_or_ids or as input_ids=, not both")
    prompt = input_ids if input_ids is not None else text_or_ids
    if prompt is None:
        raise SymphonyError("no prompt: pass text or token ids (symphony.generate(model, tokenizer, 'text'))")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise SymphonyError("a text prompt needs a tokenizer: symphony.generate(model, tokenizer, text)")
        prompt = tokenizer(prompt).input_ids  # as `tokenizer(text, return_tensors="pt")` gives model.generate
    ids = torch.as_tensor(prompt)
    if ids.dim() == 2 and ids.shape[0] != 1:
        raise SymphonyError(f"symphony.generate streams one sequence at a time; got a batch of {ids.shape[0]} "
                            "(call it once per prompt)")
    if ids.dim() not in (1, 2) or ids.is_floating_point() or ids.is_complex():
        raise SymphonyError(f"token ids must be integers shaped [n] or [1, n]; got {ids.dtype} of shape "
                            f"{tuple(ids.shape)}")
    ids = ids.reshape(-1).long()
    if ids.numel() == 0:
        raise SymphonyError("the prompt is empty: give at least one token")
    if attention_mask is not None and not bool((torch.as_tensor(attention_mask) == 1).all()):
        raise SymphonyError("attention_mask has padding: symphony.generate takes one unpadded sequence")
    return ids


def _eos_ids(eos_token_id, generation_config, tokenizer) -> set[int]:
    """`eos_token_id`, else the generation config's (as model.generate stops), else the tokenizer's."""
    eos = eos_token_id if eos_token_id is not None else getattr(generation_config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    eos = eos.tolist() if isinstance(eos, torch.Tensor) else eos
    return {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos]) if e is not None}


_TAKES = ("max_new_tokens, do_sample, temperature, top_p, eos_token_id, pad_token_id, streamer, generator, "
          "generation_config, input_ids, attention_mask, " + ", ".join(BUDGET_KEYS))


@torch.no_grad()
def generate(model, tokenizer=None, text_or_ids=None, *, input_ids=None, attention_mask=None,
             max_new_tokens: int | None = None, do_sample: bool | None = None, temperature: float | None = None,
             top_p: float | None = None, eos_token_id=None, pad_token_id=None, streamer=None,
             generator: torch.Generator | None = None, generation_config=None,
             cache_config: CacheConfig | None = None, policy: str | None = None, cache_slots: int | None = None,
             cache_bytes: int | float | str | None = None, sinks: int | None = None, ledger: int | None = None,
             window: int | None = None, segment_len: int | None = None, **unknown) -> torch.LongTensor:
    """Continue `text_or_ids` (text, or token ids [n] / [1, n]; or `input_ids=`) like `model.generate` does, through
    a bounded cache: returns a LongTensor [1, prompt + new] on the model's device.

    Sampling follows `generation_config` (default: the model's): `do_sample=False` is greedy whatever the
    temperature; `temperature`, `top_p` shape sampling (`top_k` is not supported); `generator` seeds it. Generation
    stops after `max_new_tokens` (default: the generation config's, else 20) or at an end-of-sequence token
    (`eos_token_id`, else the generation config's, else the tokenizer's), which is returned as model.generate does.
    A `streamer` (e.g. transformers' `TextStreamer`) gets the prompt, then each new token, then `end()`.
    `pad_token_id` is accepted and unused (one unpadded sequence). The cache: see `cache_config_for`."""
    if unknown:
        raise SymphonyError(f"symphony.generate does not take {', '.join(sorted(unknown))}; it takes {_TAKES}")
    gc = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if max_new_tokens is None:
        max_new_tokens = getattr(gc, "max_new_tokens", None) or DEFAULT_NEW_TOKENS
    count_arg("max_new_tokens", max_new_tokens)
    if do_sample is None:
        do_sample = bool(getattr(gc, "do_sample", False))
    if not do_sample:
        temperature = 0.0  # the engine's greedy decoding
    elif temperature is None:
        temperature = getattr(gc, "temperature", None) or 1.0
    top_p = top_p if top_p is not None else getattr(gc, "top_p", None) or 1.0
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise SymphonyError(f"sampling needs temperature > 0 and 0 < top_p <= 1; got temperature={temperature}, "
                            f"top_p={top_p} (or pass do_sample=False for greedy decoding)")
    eos = _eos_ids(eos_token_id, gc, tokenizer)

    ids = _prompt_ids(tokenizer, text_or_ids, input_ids, attention_mask)
    engine = streaming_engine(model, tokenizer, cache_config=cache_config, policy=policy, cache_slots=cache_slots,
                              cache_bytes=cache_bytes, sinks=sinks, ledger=ledger, window=window,
                              segment_len=segment_len)
    if streamer is not None:
        streamer.put(ids[None].cpu())  # the prompt first, before the prefill, as GenerationMixin does
    stream = engine.new_stream()
    engine.ingest(stream, ids)
    new: list[int] = []

    def on_token(token: int) -> None:
        new.append(token)
        if streamer is not None:
            streamer.put(torch.tensor([token]))  # one token per step, shaped [batch] as GenerationMixin's
        if token in eos:
            raise _Stop

    try:
        engine.decode(stream, max_new_tokens, temperature=temperature, top_p=top_p, stop_ids=(), on_token=on_token,
                      generator=generator)
    except _Stop:
        pass
    if streamer is not None:
        streamer.end()
    return torch.cat([ids, torch.tensor(new, dtype=torch.long)])[None].to(engine.device)
