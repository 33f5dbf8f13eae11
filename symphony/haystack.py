"""Needle-in-a-haystack inputs: a fact planted at a chosen depth of real text, and its question."""
from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass

from symphony.corpus import token_stream

_KEYS = ["vault", "harbor", "archive", "orchard", "lantern", "glacier", "violin", "compass", "meadow", "falcon",
         "beacon", "quarry", "saddle", "tunnel", "canyon", "pepper"]
_WORDS = ["marigold", "tangerine", "obsidian", "periwinkle", "saffron", "juniper", "cobalt", "vermilion",
          "lavender", "mahogany", "turquoise", "chartreuse", "aubergine", "magenta", "sienna", "cerulean"]


@dataclass
class Needle:
    key: str
    value: str
    kind: str

    @property
    def sentence(self) -> str:
        return f" The secret {self.kind_noun} for the {self.key} is {self.value}. "

    @property
    def question(self) -> str:
        return f"What is the secret {self.kind_noun} for the {self.key}? Answer with the {self.kind_noun} only."

    @property
    def kind_noun(self) -> str:
        return {"number": "number", "word": "word", "uuid": "code"}[self.kind]


def random_needle(rng: random.Random, kind: str = "number", key: str | None = None) -> Needle:
    key = key or rng.choice(_KEYS)
    if kind == "number":
        value = str(rng.randint(1_000_000, 9_999_999))
    elif kind == "word":
        value = rng.choice(_WORDS)
    elif kind == "uuid":
        value = str(uuid.UUID(int=rng.getrandbits(128)))
    else:
        raise ValueError(f"unknown needle kind {kind!r}; choose number, word or uuid")
    return Needle(key, value, kind)


def _snap(ids: list[int], cut: int, tokenizer, reach: int = 40) -> int:
    """Move the cut to just after a sentence end, so the needle does not split a sentence."""
    for j in range(cut, min(len(ids), cut + reach)):
        piece = tokenizer.decode(ids[j - 1 : j]) if j > 0 else "."
        if piece.rstrip(" ").endswith((".", "\n")):
            return j
    return cut


def build_haystack(tokenizer, corpus: str, context_len: int, depth: float, needles: list[Needle],
                   offset: int = 0) -> list[int]:
    """`context_len` tokens of `corpus` (from token `offset`, cycling) with the needles planted:
    the first at `depth` (0..1), the others (distractors) spread evenly elsewhere."""
    needle_ids = [tokenizer(n.sentence, add_special_tokens=False).input_ids for n in needles]
    room = context_len - sum(len(x) for x in needle_ids)
    if room <= 0:
        raise ValueError(f"context_len {context_len} is too short for the needles")
    hay = token_stream(tokenizer, corpus, room + offset)[offset:]
    depths = [depth] + [(depth + (i + 1) / len(needles)) % 1.0 for i in range(len(needles) - 1)]
    cuts = sorted((_snap(hay, int(round(d * room)), tokenizer), i) for i, d in enumerate(depths))
    out: list[int] = []
    prev = 0
    for cut, i in cuts:
        out += hay[prev:cut] + needle_ids[i]
        prev = cut
    return out + hay[prev:]


def contains_answer(generated: str, expected: str) -> bool:
    """Exact containment, ignoring case and surrounding punctuation/whitespace differences."""
    norm = lambda s: " ".join(s.lower().replace(",", "").split())  # noqa: E731
    g, e = norm(generated), norm(expected)
    if e.isdigit():  # a number must appear as a whole number, not inside a longer one
        digits_runs = "".join(ch if ch.isdigit() else " " for ch in g).split()
        return e in digits_runs
    return e in g


def random_ascii(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
