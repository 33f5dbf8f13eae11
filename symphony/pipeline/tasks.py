"""Phase 3's sample kinds: plain long documents and synthetic long-range tasks over real text.

A task sample is formatted the way the evals ask (`StreamingEngine.answer`): the chat template's
opening, the document (real corpus text with facts planted at random depths), "\\n\\n" + question +
the template's closing, then the answer tokens and the tokenizer's eos. Pieces are tokenised
separately and concatenated as token ids, exactly as the engine streams them, so every position
(planted facts, answer) is known without searching.

Masks: `loss_mask` marks training targets (every token of an `lm` sample; the answer tokens + eos of
a task). `keep_mask` marks the planted facts, i.e. the tokens a bounded cache must keep exactly to
answer: for multikey and kv that includes the distractors, since while streaming the question is not
yet known and they look alike.
"""
from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import asdict, dataclass

from symphony.runtime.chat_format import ChatFormat
from symphony.errors import SymphonyError
from symphony.haystack import _KEYS, Needle, _snap, random_ascii, random_needle
from symphony.pipeline import paraphrases

MIN_HAYSTACK = 16  # a task sample needs at least this many tokens of real text around its facts
COPY_TOKENS = (16, 32)  # the copy task's span, in tokens
COPY_DEPTH = (0.0, 0.3)  # ... planted early in the document
MAX_MULTIKEY_DISTRACTORS = len(_KEYS) - 1


@dataclass
class Sample:
    input_ids: list[int]
    loss_mask: list[int]
    keep_mask: list[int]
    kind: str
    answer: str
    answer_start: int
    question: str
    length: int  # the requested length (input_ids has this many tokens, exactly)
    # [start, end) of the asked fact (the first planted text) and where the document ends (the question begins):
    # what the HEP-DNA retriever trains on; empty for a plain document
    retrieval: list[int] = dataclasses.field(default_factory=list)

    def row(self) -> dict:
        return asdict(self)


@dataclass
class Fact:
    """What a task plants and asks: texts at depths (0..1) of the document, a question, its answer."""

    planted: list[str]
    depths: list[float]
    question: str
    answer: str


class TaskBuilder:
    """Builds samples of every kind from one tokenizer and one region of corpus token ids."""

    def __init__(self, tokenizer, corpus_ids: list[int], words: list[str], split: str = "train"):
        if not corpus_ids:
            raise SymphonyError("the data source is empty after tokenisation")
        self.tok = tokenizer
        self.corpus_ids = corpus_ids
        self.words = words or ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
        self.paraphrases = paraphrases.templates(split)  # train and dev draw from disjoint wordings
        before, self.after = ChatFormat.from_tokenizer(tokenizer).first_user
        self.before_ids = self.encode(before)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids = [int(eos)] if eos is not None else []

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    # -- text ----------------------------------------------------------------------------------------
    def haystack(self, rng: random.Random, n: int) -> list[int]:
        """`n` contiguous corpus tokens from a random offset (cycling through the region if it is shorter)."""
        ids = self.corpus_ids
        start = rng.randrange(len(ids))
        out = ids[start:start + n]
        while len(out) < n:
            out = out + ids[: n - len(out)]
        return out

    def plant(self, hay: list[int], pieces: list[list[int]], depths: list[float]) -> tuple[list[int], list[int], list[int]]:
        """Insert each piece at its depth of `hay`, snapped to a sentence end; (ids, keep mask, each piece's
        start)."""
        cuts = sorted((_snap(hay, int(round(d * len(hay))), self.tok), i) for i, d in enumerate(depths))
        ids: list[int] = []
        keep: list[int] = []
        starts = [0] * len(pieces)
        prev = 0
        for cut, i in cuts:
            ids += hay[prev:cut]
            starts[i] = len(ids)
            ids += pieces[i]
            keep += [0] * (cut - prev) + [1] * len(pieces[i])
            prev = cut
        ids += hay[prev:]
        keep += [0] * (len(hay) - prev)
        return ids, keep, starts

    # -- samples -------------------------------------------------------------------------------------
    def build(self, kind: str, rng: random.Random, length: int, distractors: int = 3) -> Sample:
        if kind == "lm":
            ids = self.haystack(rng, length)
            return Sample(ids, [1] * length, [0] * length, "lm", "", length, "", length)
        make = {"needle": needle_fact, "multikey": multikey_fact, "passkey": passkey_fact, "kv": kv_fact,
                "copy": self.copy_fact, "paraphrase": self.paraphrase_fact}.get(kind)
        if make is None:
            raise SymphonyError(f"unknown task kind '{kind}'")
        fact = make(rng, distractors)
        return self.task_sample(kind, rng, length, fact)

    def task_sample(self, kind: str, rng: random.Random, length: int, fact: Fact) -> Sample:
        pieces = [self.encode(t) for t in fact.planted]
        question_ids = self.encode("\n\n" + fact.question + self.after)
        answer_ids = self.encode(fact.answer) + self.eos_ids
        fixed = len(self.before_ids) + len(question_ids) + len(answer_ids) + sum(len(p) for p in pieces)
        room = length - fixed
        if room < MIN_HAYSTACK:
            raise SymphonyError(
                f"data.lengths: {length} tokens is too short for a '{kind}' sample (its template, question, answer"
                f" and planted facts take {fixed} tokens, leaving {room} for text, fewer than {MIN_HAYSTACK});"
                " use longer data.lengths or fewer data.distractors"
            )
        doc, keep, starts = self.plant(self.haystack(rng, room), pieces, fact.depths)
        input_ids = self.before_ids + doc + question_ids + answer_ids
        answer_start = len(self.before_ids) + len(doc) + len(question_ids)
        asked = len(self.before_ids) + starts[0]
        sample = Sample(
            input_ids=input_ids,
            loss_mask=[0] * answer_start + [1] * len(answer_ids),
            keep_mask=[0] * len(self.before_ids) + keep + [0] * (len(question_ids) + len(answer_ids)),
            kind=kind, answer=fact.answer, answer_start=answer_start, question=fact.question, length=length,
            retrieval=[asked, asked + len(pieces[0]), len(self.before_ids) + len(doc)],
        )
        self.check(sample)
        return sample

    def check(self, s: Sample) -> None:
        """Alignment invariants; a failure is a bug (or a tokenizer that does not round-trip), never silent."""
        n = len(s.input_ids)
        if not (len(s.loss_mask) == len(s.keep_mask) == n == s.length):
            raise RuntimeError(f"{s.kind} sample: misaligned lengths {n}, {len(s.loss_mask)}, {len(s.keep_mask)}")
        n_answer = n - s.answer_start - len(self.eos_ids)
        got = self.decode(s.input_ids[s.answer_start:s.answer_start + n_answer]).strip()
        if got != s.answer.strip():
            raise RuntimeError(f"{s.kind} sample: answer tokens decode to {got!r}, expected {s.answer!r}")
        kept = self.decode([t for t, k in zip(s.input_ids, s.keep_mask) if k])
        if s.answer not in kept:
            raise RuntimeError(f"{s.kind} sample: the kept tokens do not contain the answer {s.answer!r}")

    def paraphrase_fact(self, rng: random.Random, distractors: int = 3) -> Fact:
        return paraphrase_fact(rng, distractors, self.paraphrases)

    def copy_fact(self, rng: random.Random, distractors: int = 0) -> Fact:
        """A span of random words and codes (16-32 tokens), planted early; asked to be repeated exactly."""
        target = rng.randint(*COPY_TOKENS)
        items: list[str] = []
        while True:
            item = rng.choice(self.words) if rng.random() < 0.7 else f"{random_ascii(rng, 3)}{rng.randint(10, 99)}"
            if items and len(self.encode(" ".join(items + [item]))) > target:
                break
            items.append(item)
            if len(items) >= target:
                break
        span = " ".join(items)
        return Fact(
            [f' Memorize this sequence exactly: "{span}". '],
            [rng.uniform(*COPY_DEPTH)],
            "Repeat the sequence you were asked to memorize, exactly as written. Answer with the sequence only.",
            span,
        )


# -- the synthetic facts ------------------------------------------------------------------------------
def needle_fact(rng: random.Random, distractors: int = 0) -> Fact:
    n = random_needle(rng, "number")
    return Fact([n.sentence], [rng.random()], n.question, n.value)


def multikey_fact(rng: random.Random, distractors: int = 3) -> Fact:
    """The asked needle plus `distractors` needles with other keys and other values."""
    if distractors > MAX_MULTIKEY_DISTRACTORS:
        raise SymphonyError(f"config key 'data.distractors' must be at most {MAX_MULTIKEY_DISTRACTORS} for the"
                            f" multikey task; got {distractors}")
    keys = rng.sample(_KEYS, distractors + 1)
    values: set[str] = set()
    needles: list[Needle] = []
    for key in keys:
        n = random_needle(rng, "number", key=key)
        while n.value in values:
            n = random_needle(rng, "number", key=key)
        values.add(n.value)
        needles.append(n)
    asked = needles[0]
    return Fact([n.sentence for n in needles], [rng.random() for _ in needles], asked.question, asked.value)


def passkey_fact(rng: random.Random, distractors: int = 0) -> Fact:
    key = str(rng.randint(10_000, 99_999))
    return Fact([f" The pass key is {key}. Remember it. {key} is the pass key. "], [rng.random()],
                "What is the pass key? Answer with the number only.", key)


def paraphrase_fact(rng: random.Random, distractors: int = 3, pairs: list[tuple[str, str]] | None = None) -> Fact:
    """A fact asked about in other words (`paraphrases`: `pairs` of them), a look-alike of the same template under
    another name, and `distractors - 1` facts of other templates."""
    templates = rng.sample(pairs or paraphrases.PAIRS, max(1, distractors))
    filled = [paraphrases.fill(templates[0], rng)]
    while len(filled) < 1 + (distractors > 0):
        other = paraphrases.fill(templates[0], rng)
        if other[1] != filled[0][1]:
            filled.append(other)
    filled += [paraphrases.fill(t, rng) for t in templates[1:]]
    return Fact([f" {f}" for f, _, _ in filled], [rng.random() for _ in filled], filled[0][1], filled[0][2])


def _code(rng: random.Random) -> str:
    x = f"{rng.getrandbits(48):012x}"
    return f"{x[:8]}-{x[8:]}"


def kv_fact(rng: random.Random, distractors: int = 3) -> Fact:
    """A JSON-like object of `distractors + 1` random keys -> values; asks the value of one key."""
    pairs: dict[str, str] = {}
    while len(pairs) < distractors + 1:
        k, v = _code(rng), _code(rng)
        if k not in pairs and v not in pairs.values():
            pairs[k] = v
    asked = rng.choice(list(pairs))
    body = ", ".join(f'"{k}": "{v}"' for k, v in pairs.items())
    return Fact([f" Here is a JSON object of keys and values: {{{body}}}. "], [rng.random()],
                f'In the JSON object above, what is the value of the key "{asked}"? Answer with the value only.',
                pairs[asked])


def corpus_words(text: str) -> list[str]:
    """Distinct plain words of the corpus (3-12 letters), sorted: the copy task's vocabulary."""
    return sorted(set(re.findall(r"\b[A-Za-z]{3,12}\b", text)))
