"""Chat-template pieces for streaming: the text before and after a user message, and after a reply.

Rendering the whole conversation each turn would cost memory that grows with the chat, so the
template is rendered once around a sentinel and the pieces are reused for every turn.
"""
from __future__ import annotations

from dataclasses import dataclass

_S = "\u2063SYMPHONY\u2063"  # sentinel content, never produced by real text


@dataclass
class ChatFormat:
    first_user: tuple[str, str]  # (before, after) the content of the first user message
    next_user: tuple[str, str]  # the same for every later user message
    after_reply: str  # what closes an assistant reply (e.g. "<|im_end|>\n")

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "ChatFormat":
        if not getattr(tokenizer, "chat_template", None):
            return cls(("User: ", "\nAssistant:"), ("\nUser: ", "\nAssistant:"), "\n")

        def render(messages, gen):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)

        def split(text):
            before, _, after = text.partition(_S)
            return before, after

        first = split(render([{"role": "user", "content": _S}], True))
        history = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y" + _S}]
        base = render(history, False)
        after_reply = base.rpartition(_S)[2]
        history[1]["content"] = "y"
        base = render(history, False)
        full = render(history + [{"role": "user", "content": _S}], True)
        nxt = split(full[len(base):]) if full.startswith(base) else first
        return cls(first, nxt, after_reply)
