"""RULER's synthetic recall tasks (Hsieh et al. 2024, github.com/NVIDIA/RULER) and a NoLiMa-style paraphrase task
(Modarressi et al. 2025): sample generators and RULER's scoring. Pure python: the tokenizer is passed in.

A sample is `context_len` tokens of context (haystack + planted sentences) plus, on top, a preamble before it,
a question after it and a reply prefix (RULER's answer prefix) that starts the model's reply. Everything is
drawn from the generator it is given, so the same seeded generator gives the same sample for every method.
"""
from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from symphony.errors import SymphonyError
from symphony.haystack import _snap

# RULER's noise haystack (niah_single_1, vt)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# keys are adjective-noun pairs, as RULER's wonderwords keys ("abundant-crib"): 100 x 100 = 10,000 keys
ADJECTIVES = """able acid angry brave bright broad calm cheap clean clever close cold cool crisp cruel curly
dark deep dry dusty eager early easy empty fair fancy fast fierce flat fresh gentle giant glad golden grand
great green happy hard heavy hollow honest huge humble icy jolly kind large late lazy light little lively
long loud lucky mighty modern narrow neat noble odd old pale plain polite proud quick quiet rapid rare rich
rough round royal rusty sad safe salty sharp shiny short silent silly simple slow small smooth soft solid
sour spicy steep still stormy strange strong sweet swift tall tame tidy tiny warm wild wise young""".split()
NOUNS = """acorn anchor apple arrow badge bakery banjo barrel basket beach bell bicycle blanket boat bottle
bridge brush bucket cabin camera candle canoe carpet castle cellar chair cherry chimney circus clock cloud
coin cookie cottage crab crown cup curtain desk diamond dragon drum eagle engine feather fence fiddle flag
flute forest fountain garden garlic giraffe glove goat guitar hammer helmet honey island jacket kettle kite
ladder lamp lemon lizard magnet mango mirror monkey mountain needle nest ocean onion otter oyster paddle
parrot pebble pencil piano pillow pirate planet pocket puppet rabbit ribbon river robot rocket saddle
sandal scarf shovel spoon squirrel stamp teapot tiger tractor trumpet tulip wagon whistle window""".split()

# invented names for the paraphrase task's facts (the key, as RULER's key)
NAMES = """Varlow Kestrin Ombrey Tallisk Quenford Brindle Marrowby Haskett Pellinor Dunmere Corvane Eastwick
Feldane Grisholm Ivory Jessamy Kettleby Lindqvist Morwenna Norcott Orsini Pendry Quillon Rathbone Selwyn
Thorncombe Ulverton Vexley Whitcombe Yarrow Zennor Abernathy Blackwood Carrick Delacourt Emberly Farrowdale
Galloway Hartigan Inchcape""".split()

# (fact, question, value kind): the question shares no content word with the fact, except the name (the key)
PARAPHRASES = [
    ("Work on the {name} viaduct ended in {value}.", "When was the {name} bridge finished?", "year"),
    ("The {name} family moved into their lakeside cottage in {value}.",
     "In what year did the {name} household relocate to a house by the water?", "year"),
    ("{name} wed her childhood sweetheart in {value}.", "When did {name} get married?", "year"),
    ("The {name} orchestra gave its first concert in {value}.", "When did the {name} ensemble debut?", "year"),
    ("{name} earned a doctorate in chemistry in {value}.", "In which year did {name} receive a PhD?", "year"),
    ("The {name} shipyard launched its final vessel in {value}.",
     "When did the {name} dockyard stop building boats?", "year"),
    ("Ownership of the {name} vineyard passed to a cooperative in {value}.", "When was the {name} winery sold?",
     "year"),
    ("The {name} lighthouse was switched off for good in {value}.", "When did the {name} beacon cease operating?",
     "year"),
    ("{name} retired from professional football in {value}.", "When did {name} stop playing soccer?", "year"),
    ("The {name} museum welcomed its first visitors in {value}.",
     "When did the {name} gallery open to the public?", "year"),
    ("The {name} reservoir holds {value} cubic metres when full.", "What is the capacity of the {name} lake?",
     "number"),
    ("Exactly {value} sheep graze on the {name} estate.", "How many animals live on the {name} farm?", "number"),
    ("The {name} expedition reached the summit in {value}.",
     "When did the {name} climbers get to the top of the mountain?", "year"),
]

_TYPES = {"number": ("number", "numbers"), "uuid": ("uuid", "uuids"), "word": ("word", "words")}
DEPTH_GRID = [i / 39 for i in range(40)]  # RULER: needles at np.linspace(0, 100, 40) percent, drawn per sample


@dataclass
class Sample:
    task: str
    context: list[int]  # exactly context_len token ids: haystack and the planted sentences
    preamble: str  # before the context (RULER's task instruction)
    question: str  # after the context
    prefix: str  # starts the reply (RULER's answer prefix)
    references: list[str]  # what the reply must contain (RULER's outputs)
    needles: list[str] = field(default_factory=list)  # every planted sentence, targets and distractors


class Sources:
    """The haystacks of one run, tokenised once: the essay corpus (any text) and RULER's noise text."""

    def __init__(self, tokenizer, corpus: str):
        self.tokenizer = tokenizer
        self.essay = self.encode(corpus)
        self.noise = self.encode((NOISE + " ") * 16)
        if not self.essay:
            raise SymphonyError("the haystack text is empty after tokenisation; pass another --haystack")
        self.newline = self.encode("\n")[-1]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def haystack(self, kind: str, rng: random.Random, n: int) -> list[int]:
        """n tokens of the essay or the noise text from a random offset, cycling."""
        ids = self.essay if kind == "essay" else self.noise
        start = _snap(ids, rng.randrange(len(ids)), self.tokenizer) % len(ids)  # at a sentence start
        out = ids[start:start + n]
        while len(out) < n:
            out += ids[: n - len(out)]
        return out


def _too_short(task: str, n: int, need: int) -> SymphonyError:
    return SymphonyError(f"length {n} is too short for {task} (its planted sentences take {need} tokens); "
                         "use longer --lengths")


def plant(sources: Sources, task: str, n: int, kind: str, sentences: list[str], depths: list[float],
          rng: random.Random) -> list[int]:
    """The sentences planted in n tokens of the `kind` haystack, sentence i at depths[i] (0..1, moved to the next
    sentence end); sentences at the same place keep their order."""
    pieces = [sources.encode(f" {s} ") for s in sentences]
    room = n - sum(len(p) for p in pieces)
    if room <= 0:
        raise _too_short(task, n, n - room)
    hay = sources.haystack(kind, rng, room)
    at = [_snap(hay, round(d * room), sources.tokenizer) for d in depths]
    out: list[int] = []
    last = 0
    for i in sorted(range(len(pieces)), key=lambda i: (at[i], i)):
        out.extend(hay[last:at[i]])
        out.extend(pieces[i])
        last = at[i]
    return out + hay[last:]


def fill_with_needles(sources: Sources, task: str, n: int, targets: list[str], more: Callable[[], str],
                      rng: random.Random) -> tuple[list[int], list[str]]:
    """A haystack of needles only: the targets at random places among as many `more()` needles as fit in n
    tokens, one per line; the last few tokens (less than one needle) are newlines. (ids, every needle)."""
    lines = [sources.encode(s + "\n") for s in targets]
    used = sum(len(x) for x in lines)
    if used > n:
        raise _too_short(task, n, used)
    others: list[tuple[str, list[int]]] = []
    while True:
        s = more()
        ids = sources.encode(s + "\n")
        if used + len(ids) > n:
            break
        others.append((s, ids))
        used += len(ids)
    for s, ids in zip(targets, lines):
        others.insert(rng.randint(0, len(others)), (s, ids))
    out = [i for _, ids in others for i in ids]
    return out + [sources.newline] * (n - len(out)), [s for s, _ in others]


# -- values ------------------------------------------------------------------------------------------
def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _distinct(draw: Callable[[], str], k: int, avoid: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        v = draw()
        if v not in avoid:
            avoid.add(v)
            out.append(v)
    return out


def word_keys(rng: random.Random) -> list[str]:
    """Every adjective-noun key, shuffled: distinct keys are taken from the front."""
    keys = [f"{a}-{b}" for a in ADJECTIVES for b in NOUNS]
    rng.shuffle(keys)
    return keys


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def needle_sentence(key: str, value: str, kind: str = "number") -> str:
    return f"One of the special magic {_TYPES[kind][1]} for {key} is: {value}."


# -- the tasks ---------------------------------------------------------------------------------------
def niah(task: str, sources: Sources, n: int, rng: random.Random, haystack: str = "essay", key: str = "word",
         value: str = "number", keys: int = 1, values: int = 1, queries: int = 1) -> Sample:
    """RULER's needle in a haystack: `keys` keys planted (`queries` of them asked about, the rest distractors of
    the same form), `values` values under each; haystack 'noise', 'essay' or 'needles' (needles only: as many
    keys as fit)."""
    pool = word_keys(rng) if key == "word" else None
    draw_key = (lambda: pool.pop()) if pool is not None else (lambda: _uuid(rng))
    draw_value = (lambda: _number(rng)) if value == "number" else (lambda: _uuid(rng))
    seen: set[str] = set()

    def needles_of(k: str) -> list[str]:
        return [needle_sentence(k, v, value) for v in _distinct(draw_value, values, seen)]

    asked = _distinct(draw_key, queries, set())
    targets = [s for k in asked for s in needles_of(k)]
    one, many = _TYPES[value]
    if queries == 1 and values == 1:
        question = f"What is the special magic {one} for {asked[0]} mentioned in the provided text?"
        prefix = f"The special magic {one} for {asked[0]} mentioned in the provided text is"
    else:
        question = f"What are all the special magic {many} for {_and(asked)} mentioned in the provided text?"
        prefix = f"The special magic {many} for {_and(asked)} mentioned in the provided text are"
    references = [s.rsplit(" ", 1)[1].rstrip(".") for s in targets]
    if haystack == "needles":
        def more() -> str:
            if pool is not None and not pool:
                raise SymphonyError(f"length {n} needs more than the {len(ADJECTIVES) * len(NOUNS)} keys {task} has; "
                                    "use shorter --lengths")
            return needle_sentence(draw_key(), _distinct(draw_value, 1, seen)[0], value)

        context, planted = fill_with_needles(sources, task, n, targets, more, rng)
    else:
        planted = targets + [s for _ in range(keys - queries) for s in needles_of(draw_key())]
        depths = rng.sample(DEPTH_GRID, len(planted)) if len(planted) <= len(DEPTH_GRID) else \
            [rng.random() for _ in planted]
        context = plant(sources, task, n, haystack, planted, depths, rng)
    preamble = (f"Some special magic {many} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {many} afterwards.\n")
    return Sample(task, context, preamble, question, prefix, references, planted)


def variable_tracking(task: str, sources: Sources, n: int, rng: random.Random, hops: int = 4,
                      chains: int = 1) -> Sample:
    """RULER's vt: "VAR ABCDE = 12345" then "VAR FGHIJ = VAR ABCDE" ... (`hops` hops), the lines in order at
    spread depths of the noise haystack; asked for every variable holding the first chain's value. Further
    chains (other names, other values) are distractors."""
    names = _distinct(lambda: "".join(rng.choices(string.ascii_uppercase, k=5)), (hops + 1) * chains, set())
    values = _distinct(lambda: str(rng.randint(10_000, 99_999)), chains, set())
    lines, depths = [], []
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        lines += [f"VAR {chain[0]} = {values[c]}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
        depths += [(j + rng.uniform(0.05, 0.95)) / (hops + 1) for j in range(hops + 1)]  # in order, spread
    context = plant(sources, task, n, "noise", lines, depths, rng)
    v = values[0]
    return Sample(task, context, "Memorize and track the chain(s) of variable assignment hidden in the following "
                  "text.\n\n", f"Question: Find all variables that are assigned the value {v} in the text above.",
                  f"Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} variables "
                  f"are assigned the value {v}, they are:", names[:hops + 1], lines)


def paraphrase(task: str, sources: Sources, n: int, rng: random.Random, distractors: int = 0) -> Sample:
    """NoLiMa-style: one fact in the essay haystack, asked about in words it does not use (only the name, the
    key, is shared); `distractors` look-alike facts (same sentence, other names and values) elsewhere."""
    fact, question, kind = rng.choice(PARAPHRASES)
    names = rng.sample(NAMES, distractors + 1)
    draw = (lambda: str(rng.randint(1850, 2020))) if kind == "year" else (lambda: str(rng.randint(10_000, 99_999)))
    values = _distinct(draw, distractors + 1, set())
    facts = [fact.format(name=a, value=v) for a, v in zip(names, values)]
    depths = rng.sample(DEPTH_GRID, len(facts))
    context = plant(sources, task, n, "essay", facts, depths, rng)
    return Sample(task, context, "Read the following text; a question about it comes after it.\n",
                  question.format(name=names[0]), "Answer:", [values[0]], facts)


@dataclass(frozen=True)
class Task:
    name: str
    build: Callable[..., Sample]
    max_new_tokens: int  # RULER's tokens_to_generate (niah 128, vt 30; qa's 32 for the paraphrased facts)
    about: str
    haystack: str = "essay"  # what fills the context: the essay (--haystack), RULER's noise text, or needles only


def _niah(name: str, about: str, haystack: str = "essay", **shape) -> Task:
    """A RULER niah task: the haystack it reads is named once, for the builder and for the run's task choice."""
    return Task(name, partial(niah, haystack=haystack, **shape), 128, about, haystack)


TASKS: dict[str, Task] = {t.name: t for t in [
    _niah("niah_single_1", "noise haystack, word key, 7-digit number", "noise"),
    _niah("niah_single_2", "essay haystack, word key, number"),
    _niah("niah_single_3", "essay haystack, word key, uuid", value="uuid"),
    _niah("niah_multikey_1", "essay haystack, 3 distractor needles with other keys", keys=4),
    _niah("niah_multikey_2", "needles only, word keys, numbers", "needles"),
    _niah("niah_multikey_3", "needles only, uuid keys, uuids", "needles", key="uuid", value="uuid"),
    _niah("niah_multivalue", "essay haystack, 4 values under one key, all asked", values=4),
    _niah("niah_multiquery", "essay haystack, 4 keys asked in one question", keys=4, queries=4),
    Task("vt", partial(variable_tracking), 30, "variable tracking: a 4-hop chain of VAR assignments", "noise"),
    Task("paraphrase", partial(paraphrase), 32, "a fact asked about in other words (NoLiMa-style)"),
    Task("paraphrase_distractors", partial(paraphrase, distractors=3), 32,
         "paraphrase with 3 look-alike facts (other names)"),
]}


def parse_tasks(text: str | None) -> list[str]:
    """'niah_single_1,vt' -> the names; empty or 'all' -> every task."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not names or names == ["all"]:
        return list(TASKS)
    bad = [t for t in names if t not in TASKS]
    if bad:
        raise SymphonyError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def sample_rng(seed: int, task: str, context_len: int, index: int) -> random.Random:
    """One sample's generator: the same (seed, task, length, index) always draws the same sample."""
    return random.Random(f"ruler:{seed}:{task}:{context_len}:{index}")


def make_sample(task: str, sources: Sources, context_len: int, index: int, seed: int = 0) -> Sample:
    return TASKS[task].build(task, sources, context_len, sample_rng(seed, task, context_len, index))


# -- scoring (RULER's scripts/eval/synthetic/constants.py) -------------------------------------------
def string_match_all(prediction: str, references: list[str]) -> float:
    """The fraction of the references found in the prediction (case-insensitive); RULER's per-sample score."""
    pred = prediction.lower()
    return sum(r.lower() in pred for r in references) / len(references)


def exact_all(prediction: str, references: list[str]) -> bool:
    return string_match_all(prediction, references) == 1.0


def example(task: str, tokenizer: Any, corpus: str, context_len: int = 256, seed: int = 0) -> str:
    """One sample as the model reads it (for docs and eyeballing)."""
    sources = Sources(tokenizer, corpus)
    s = make_sample(task, sources, context_len, 0, seed)
    return f"{s.preamble}{tokenizer.decode(s.context)}\n\n{s.question}\n{s.prefix}"
