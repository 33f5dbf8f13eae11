"""Functional integrity: the wrapped model still knows what the base model knew.

A fixed battery of prompts with checkable answers (world knowledge, arithmetic, instruction
following, code that must parse) runs on the base model (`model.generate`, DynamicCache) and through
Symphony's engine, at short context and after a long unrelated prefix streamed through the cache.
"""
from __future__ import annotations

import ast
import copy
import re
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from symphony.corpus import builtin_text, token_stream
from symphony.runtime.engine import StreamingEngine


@dataclass(frozen=True)
class Check:
    name: str
    category: str
    prompt: str
    expect: tuple[str, ...] = ()  # any of these (case-insensitive) must appear; empty: use `judge`
    judge: str = ""  # special judge: "python", "upper", "count3", "yes_only"


def _c(name, category, prompt, *expect, judge=""):
    return Check(name, category, prompt, tuple(expect), judge)


BATTERY: tuple[Check, ...] = (
    _c("capital_france", "knowledge", "What is the capital of France?", "paris"),
    _c("capital_japan", "knowledge", "What is the capital of Japan?", "tokyo"),
    _c("capital_italy", "knowledge", "What is the capital of Italy?", "rome"),
    _c("capital_germany", "knowledge", "What is the capital of Germany?", "berlin"),
    _c("capital_spain", "knowledge", "What is the capital of Spain?", "madrid"),
    _c("largest_planet", "knowledge", "Which planet is the largest in our solar system?", "jupiter"),
    _c("red_planet", "knowledge", "Which planet is known as the Red Planet?", "mars"),
    _c("water_formula", "knowledge", "What is the chemical formula of water?", "h2o", "h₂o"),
    _c("romeo_author", "knowledge", "Who wrote Romeo and Juliet?", "shakespeare"),
    _c("relativity", "knowledge", "Who developed the theory of relativity?", "einstein"),
    _c("freezing_point", "knowledge", "At what temperature in Celsius does water freeze?", "0", "zero"),
    _c("days_week", "knowledge", "How many days are there in a week?", "7", "seven"),
    _c("largest_ocean", "knowledge", "What is the largest ocean on Earth?", "pacific"),
    _c("sun_star", "knowledge", "Is the Sun a star or a planet?", "star"),
    _c("add_small", "arithmetic", "What is 2 + 3? Answer with the number only.", "5"),
    _c("add_tens", "arithmetic", "What is 10 + 20? Answer with the number only.", "30"),
    _c("mul_small", "arithmetic", "What is 3 times 4? Answer with the number only.", "12"),
    _c("sub_small", "arithmetic", "What is 9 minus 4? Answer with the number only.", "5"),
    _c("double", "arithmetic", "What is double 6? Answer with the number only.", "12"),
    _c("half", "arithmetic", "What is half of 10? Answer with the number only.", "5"),
    _c("add_hundred", "arithmetic", "What is 100 + 1? Answer with the number only.", "101"),
    _c("say_yes", "instruction", "Reply with only the word yes.", judge="yes_only"),
    _c("repeat_word", "instruction", "Repeat this word exactly: banana", "banana"),
    _c("uppercase", "instruction", "Write the word hello in capital letters.", judge="upper"),
    _c("list_three", "instruction", "List three colors, separated by commas.", judge="count3"),
    _c("opposite_hot", "instruction", "What is the opposite of hot? Answer with one word.", "cold"),
    _c("translate_hola", "instruction", "Translate the Spanish word 'hola' into English.", "hello", "hi"),
    _c("code_add", "code", "Write a Python function add(a, b) that returns a + b.", judge="python"),
    _c("code_square", "code", "Write a Python function square(x) that returns x squared.", judge="python"),
    _c("code_reverse", "code", "Write a Python function that reverses a string.", judge="python"),
    _c("code_max", "code", "Write a Python function that returns the largest number in a list.", judge="python"),
    _c("code_even", "code", "Write a Python function is_even(n) that returns True if n is even.", judge="python"),
)


def extract_code(text: str) -> str:
    """The first fenced code block, else the text from the first `def`/`import` on."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", text, re.S)
    if m:
        return m.group(1)
    m = re.search(r"^(def |import |from |class ).*", text, re.S | re.M)
    return m.group(0) if m else ""


def judge(check: Check, output: str) -> bool:
    """Whether `output` answers `check` correctly. Deliberately strict enough to fail."""
    low = output.lower()
    if check.judge == "python":
        code = extract_code(output)
        if "def " not in code:
            return False
        try:
            ast.parse(code)
            return True
        except SyntaxError:
            return False
    if check.judge == "upper":
        return "HELLO" in output
    if check.judge == "count3":
        first_line = next((ln for ln in output.splitlines() if ln.strip()), "")
        items = [x for x in re.split(r",|\n", first_line) if x.strip()]
        return len(items) >= 3 or len([ln for ln in output.splitlines() if ln.strip()]) >= 3
    if check.judge == "yes_only":
        return re.sub(r"[^a-z]", "", low) == "yes"
    for exp in check.expect:
        if exp.isdigit():
            if exp in re.findall(r"\d+", low):
                return True
        elif re.search(r"\b" + re.escape(exp) + r"\b", low) or (not exp.isalnum() and exp in low):
            return True
    return False


def base_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The reference: plain `model.generate` (DynamicCache), greedy, chat template, memory adapters off."""
    from symphony.memory.inject import adapters_off

    enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad(), adapters_off(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def prefixed_stream(engine: StreamingEngine, prefix_ids: list[int] | None):
    """A stream holding the opening of a user message and, optionally, a long unrelated prefix."""
    stream = engine.new_stream()
    engine.ingest(stream, engine.encode(engine.chat_format.first_user[0]))
    if prefix_ids:
        engine.ingest(stream, prefix_ids)
    return stream


def engine_generate(engine: StreamingEngine, prompt: str, max_new_tokens: int, start=None) -> str:
    """Through the engine: a fresh stream, or a copy of `start` (a stream with a long prefix, see
    prefixed_stream) that the prompt continues after a blank line."""
    if start is None:
        stream = prefixed_stream(engine, None)
    else:
        stream, prompt = copy.deepcopy(start), "\n\n" + prompt
    engine.ask(stream, prompt, engine.chat_format.first_user[1])
    return engine.tokenizer.decode(engine.decode(stream, max_new_tokens), skip_special_tokens=True)


def run_integrity(engine: StreamingEngine, prefix_tokens: int, max_new_tokens: int,
                  checks: tuple[Check, ...] = BATTERY, on_row: Callable[[dict], None] | None = None,
                  done: Callable[[str], bool] = lambda name: False, progress: bool = True) -> list[dict]:
    model, tok = engine.model, engine.tokenizer
    # the long prefix is streamed once; every check continues its own copy of that stream
    prefixed = prefixed_stream(engine, token_stream(tok, builtin_text(), prefix_tokens)) if prefix_tokens > 0 else None
    rows = []
    for check in tqdm(checks, desc="integrity", unit="check", disable=not progress):
        if done(check.name):
            continue
        t0 = time.perf_counter()
        base_out = base_generate(model, tok, check.prompt, max_new_tokens)
        sym_out = engine_generate(engine, check.prompt, max_new_tokens)
        long_out = engine_generate(engine, check.prompt, max_new_tokens, prefixed) if prefixed else None
        row = {
            "name": check.name,
            "category": check.category,
            "prompt": check.prompt,
            "base_ok": judge(check, base_out),
            "symphony_ok": judge(check, sym_out),
            "same_output": base_out == sym_out,
            "symphony_long_ok": judge(check, long_out) if long_out is not None else None,
            "base_output": base_out,
            "symphony_output": sym_out,
            "symphony_long_output": long_out,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    def frac(key, sel=None):
        got = [r[key] for r in rows if (sel is None or r["category"] == sel) and r.get(key) is not None]
        return round(sum(got) / len(got), 4) if got else None

    cats = sorted({r["category"] for r in rows})
    return {
        "checks": len(rows),
        "base_ok": frac("base_ok"),
        "symphony_ok": frac("symphony_ok"),
        "symphony_long_ok": frac("symphony_long_ok"),
        "same_output": frac("same_output"),
        "by_category": {c: {k: frac(k, c) for k in ("base_ok", "symphony_ok", "symphony_long_ok", "same_output")}
                        for c in cats},
    }
