"""Which archived text a question gets back: whole facts, chosen by the question's terms.

The archive (`recall.RecallLedger`) stores token ids in fixed spans, but a fact does not respect that grid. So
the candidate spans are joined with their neighbours into runs of consecutive text and cut at sentence and
line ends into *units*; a unit is what gets judged and re-read, so a value is never cut at a span edge and a
fact split across spans scores as the whole sentence it is.

Picking (`pick`), in units of query weight (IDF of the question's tokens and token pairs):
- the best unit first;
- then any unit that adds a query term no pick holds yet weighing at least `min_gain` of the first pick's
  heaviest term (another key of a multi-query question: one rare term, not a sum of common words a look-alike's
  neighbouring sentence brings), and that weighs at least `min_gain` of the first pick in all: a look-alike that
  only repeats the template adds nothing and stays out;
- and every *sibling* of a pick: a unit holding all of that pick's query terms (the other values filed under
  the same key). Look-alikes of another key lack the key, so they are no siblings.
Since a unit holds its sentence whole, the asked fact holds every term a look-alike holds plus the key: it
wins however rare the template's words are in the haystack.

Hops (`hop_pairs`): re-read text may name something the question does not (`VAR B = VAR A`). The token pairs
of a pick that occur in a few other places of the archive, and nowhere in the question, become the next
search's terms, up to `hops` times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_UNIT = 96  # tokens: a longer sentence is judged and re-read in pieces of this size (a uuid fact: ~70)
SENTENCE_PUNCT = (".", "!", "?")
# a full stop after these (or after an initial: U.S., J. R.) does not end the sentence: "Dr. Voss's office is in
# room 4417" is one fact. Words that often end a sentence too (etc., Inc.) are not listed.
ABBREVIATIONS = frozenset("Dr Mr Mrs Ms Mx St Mt Jr Sr Prof Rev Capt Col Gen Lt Sgt Gov Sen Rep Dept No Nos Fig "
                          "Figs Vol Vols vs approx cf al".split())


@dataclass(frozen=True)
class TokenKinds:
    """What recall needs to know of one tokenizer's vocabulary (bool [V] each). Text is cut into units after
    a token that holds a line break, or after one that ends in . ! ? when whitespace follows (so `3.14` and
    `example.com` stay whole), except a bare full stop after an abbreviation (`abbrev`: Dr, Mr, ... or a
    one-letter word, `period`: the token "."); hops follow names, pairs of `word` tokens (letters, maybe after a
    space); `content` tokens hold a letter or digit (the copy rule only ever puts those in place of the model's)."""

    newline: torch.Tensor
    punct: torch.Tensor
    space_start: torch.Tensor
    word: torch.Tensor
    content: torch.Tensor | None = None
    abbrev: torch.Tensor | None = None  # "Dr", " Mr", " U", "S": a full stop right after one may not end a sentence
    single: torch.Tensor | None = None  # a one-letter token: an initial when it starts a word or follows a period
    period: torch.Tensor | None = None  # the token "." alone
    words: Words | None = None  # terms compared as words, not token ids

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenKinds:
        n = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
        texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        return cls(torch.tensor(["\n" in t for t in texts]),
                   torch.tensor([t.rstrip(" ").endswith(SENTENCE_PUNCT) for t in texts]),
                   torch.tensor([t[:1].isspace() for t in texts]),
                   torch.tensor([t.lstrip(" ").isalpha() for t in texts]),
                   torch.tensor([any(c.isalnum() for c in t) for t in texts]),
                   torch.tensor([t.strip() in ABBREVIATIONS for t in texts]),
                   torch.tensor([len(t.strip()) == 1 and t.strip().isalpha() for t in texts]),
                   torch.tensor([t.strip() == "." for t in texts]),
                   Words.from_texts(texts))

    def after(self, ids: torch.Tensor) -> torch.Tensor:
        """bool [n]: whether a unit ends after each token of `ids` (a run of consecutive text; its last
        token always ends one)."""
        known, safe = _in_vocab(ids, len(self.newline))
        nl = self.newline[safe] & known
        punct = self.punct[safe] & known
        spaced = torch.ones_like(nl)
        spaced[:-1] = self.space_start[safe[1:]] | ~known[1:]
        out = nl | (punct & spaced)
        if self.abbrev is not None and ids.numel() > 1:
            out[1:] &= ~(self.period[safe[1:]] & self._abbreviation(safe, known))
        out[-1] = True
        return out

    def _abbreviation(self, safe: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """bool [n - 1]: whether token i (of 0..n-2) is an abbreviation a full stop at i + 1 belongs to: a listed
        word, or a one-letter word (an initial: starting a word, or after another initial's full stop)."""
        prev = safe[:-1]
        listed = self.abbrev[prev] & known[:-1]
        starts_word = self.space_start[prev].clone()
        starts_word[0] = True  # nothing before it in this run
        starts_word[1:] |= self.period[safe[:-2]] & known[:-2]
        return listed | (self.single[prev] & known[:-1] & starts_word)


WORD_MOD = 2_000_000_011  # prime; word ids are vocab + a hash below it, so they fit int32 beside token ids
WORD_BASE = 1_114_129  # above every code point
WORD_CHARS = 1024  # letters and digits a word's hash tells apart; a longer one collides only with its own kind


@dataclass(frozen=True)
class Words:
    """One id per word, whatever tokens spell it: " Tarrant" finds "TAR" + "RANT" in `TARRANT_API_TOKEN`, "the"
    finds "The", a name at a line start or after a bracket finds it after a space. A word is a run of letters and
    digits, case folded; a token starting with a space or another non-alphanumeric character starts a new one, so
    "cab" + "in" is the word "cabin", not " in". Every token of a word gets the word's id (the vocabulary's size
    plus a polynomial hash of its letters and digits); tokens without a letter or digit keep their own id."""

    hash: torch.Tensor  # long [V]: the token's letters and digits, folded, as a polynomial mod WORD_MOD
    length: torch.Tensor  # long [V]: how many letters and digits it holds (0: not part of any word)
    opens: torch.Tensor  # bool [V]: starts a new word (begins with a space or another non-alphanumeric char)
    closes: torch.Tensor  # bool [V]: ends its word (ends in a non-alphanumeric char)
    power: torch.Tensor  # long [WORD_CHARS]: WORD_BASE ** k mod WORD_MOD

    @classmethod
    def from_texts(cls, texts: list[str]) -> Words:
        hashes, lengths = [], []
        for t in texts:
            h, k = 0, 0
            for c in t.lower():
                if c.isalnum():
                    h, k = (h * WORD_BASE + ord(c)) % WORD_MOD, k + 1
            hashes.append(h)
            lengths.append(k)
        power = [1]
        for _ in range(WORD_CHARS - 1):
            power.append(power[-1] * WORD_BASE % WORD_MOD)
        return cls(torch.tensor(hashes), torch.tensor(lengths), torch.tensor([not t[:1].isalnum() for t in texts]),
                   torch.tensor([not t[-1:].isalnum() for t in texts]), torch.tensor(power))

    def __call__(self, ids: torch.Tensor, joined: torch.Tensor | None = None) -> torch.Tensor:
        """Word ids of token-id rows [..., n] (unknown tokens, -1, kept). A row starts a new word, unless
        `joined` (bool [rows] of 2-D `ids`) says it continues the row before (the next span of the stream), so a
        word cut by a span edge is the same word in both spans."""
        if ids.numel() == 0:
            return ids
        v, n = len(self.length), ids.shape[-1]
        flat = ids.reshape(-1).long()
        known, safe = _in_vocab(flat, v)
        length = torch.where(known, self.length[safe], 0)
        content = length > 0
        opens = ~content | self.opens[safe]
        opens[1:] |= ~content[:-1] | self.closes[safe[:-1]]
        row_start = torch.ones(flat.numel() // n, dtype=torch.bool)
        if joined is not None:
            row_start[1:] = ~joined.reshape(-1)[1:]
        opens[::n] |= row_start
        word = torch.cumsum(opens.long(), 0) - 1  # [n_tokens]: which word each token is in
        seen = torch.cumsum(length, 0)
        end = torch.zeros(int(word[-1]) + 1, dtype=torch.long).scatter_reduce(0, word, seen, "amax")
        after = (end[word] - seen).clamp(max=WORD_CHARS - 1)  # letters and digits after this token in its word
        term = self.hash[safe] * self.power[after] % WORD_MOD * content
        spelt = torch.zeros(len(end), dtype=torch.long).index_add_(0, word, term) % WORD_MOD
        return torch.where(content, v + spelt[word], flat).reshape(ids.shape).to(ids.dtype)


@dataclass
class Unit:
    start: int  # stream position of its first token
    ids: list[int]
    present: torch.Tensor  # bool [terms]: which query terms (tokens, then pairs) it holds
    score: float
    similarity: float = 0.0  # the HEP-DNA retriever's: its nearest span's summary against the question's

    @property
    def end(self) -> int:
        return self.start + len(self.ids)


class Query:
    """A question's terms: its distinct tokens (words, with `words`), then its distinct consecutive pairs of them,
    with weights."""

    def __init__(self, ids: list[int] | torch.Tensor, pairs: list[tuple[int, int]] | None = None,
                 words: Words | None = None, content: torch.Tensor | None = None):
        """`words` (TokenKinds.words): terms and text compared as words, not token ids. `content`
        (TokenKinds.content): only tokens with a letter or digit are terms, and pairs holding one; a question's
        line breaks and punctuation would otherwise make a fact that ends in a line break (no full stop) hold one
        term more than its co-keyed facts, which then no longer count as its siblings."""
        self.words = words
        raw = torch.as_tensor(ids, dtype=torch.int32).reshape(-1)
        qa = self.canonical(raw)
        if content is None:
            wanted = torch.ones(len(qa), dtype=torch.bool)
        else:
            known, safe = _in_vocab(raw, len(content))
            wanted = content[safe] & known
        self.tokens = torch.unique(qa[wanted])
        # a pair of one word's own tokens says nothing its word does not
        self.pairs = (list(dict.fromkeys(p for p, a, b in zip(_pairs(qa), wanted[:-1].tolist(), wanted[1:].tolist())
                                         if (a or b) and p[0] != p[1])) if pairs is None else list(dict.fromkeys(pairs)))
        self.pair_codes = _pair_codes(*torch.tensor(self.pairs, dtype=torch.long).reshape(-1, 2).T)
        self.weight = torch.zeros(len(self.tokens) + len(self.pairs))
        self.df = torch.zeros(len(self.tokens))  # spans holding each token, once `set_idf` has them

    def canonical(self, ids: torch.Tensor, joined: torch.Tensor | None = None) -> torch.Tensor:
        """`ids` with each known token replaced by its word's id (`words`, `joined` as there); unknown ones (-1)
        kept."""
        return ids if self.words is None else self.words(ids, joined)

    def presence(self, ids: torch.Tensor, with_pairs: bool = True, joined: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """[rows, terms] for token-id rows [rows, n]: whether each row holds each term (a pair: consecutively).
        `joined` (bool [rows]): row r continues row r - 1's text."""
        ids = self.canonical(ids, joined)
        present = (ids[:, :, None] == self.tokens[None, None, :]).any(dim=1)
        if not (with_pairs and self.pairs):
            return present
        held = _pair_codes(ids[:, :-1], ids[:, 1:])
        return torch.cat([present, (held[:, :, None] == self.pair_codes[None, None, :]).any(dim=1)], dim=1)

    def set_idf(self, df: torch.Tensor, n_rows: int, pair_df: torch.Tensor) -> None:
        """Weights from document frequencies over `n_rows` spans: each term's IDF, 0 when absent everywhere."""
        self.df = df
        idf = lambda d: torch.log((n_rows + 1) / (d + 1)) * (d > 0)  # noqa: E731
        self.weight = torch.cat([idf(df), idf(pair_df).reshape(-1)]).float()


def units(runs: list[tuple[int, torch.Tensor]], query: Query, kinds: TokenKinds | None,
          max_unit: int = MAX_UNIT, every: bool = False) -> list[Unit]:
    """The units of `runs` (stream start, token ids of consecutive text) that hold any query term (`every`: all
    of them), scored. Without `kinds` (no tokenizer) text is cut into pieces of `max_unit` on a fixed grid of
    stream positions."""
    pieces: list[tuple[int, torch.Tensor]] = []
    for start, ids in runs:
        if ids.numel() == 0:
            continue
        cut = (kinds.after(ids) if kinds is not None else
               (torch.arange(start, start + ids.numel()) + 1) % max_unit == 0)
        cut[-1] = True
        lo = 0
        for hi in (torch.nonzero(cut)[:, 0] + 1).tolist():
            pieces += [(start + a, ids[a:min(hi, a + max_unit)]) for a in range(lo, hi, max_unit)]
            lo = hi
    if not pieces:
        return []
    present = query.presence(_rows([p for _, p in pieces]))
    score = (present.float() * query.weight).sum(1)
    return [Unit(start, p.tolist(), present[i], float(score[i])) for i, (start, p) in enumerate(pieces)
            if every or score[i] > 0]


def pick(found: list[Unit], weight: torch.Tensor, budget_tokens: int, min_gain: float,
         taken: list[Unit] | None = None) -> list[Unit]:
    """Units to re-read, within `budget_tokens` (see the module's docstring); `taken` are picks of an
    earlier search whose terms count as covered."""
    order = sorted(found, key=lambda u: (-u.score, u.start))
    if not order:
        return []
    picks: list[Unit] = []
    used = sum(len(u.ids) for u in taken or [])
    covered = torch.zeros_like(order[0].present)
    first = order[0].score
    heaviest = float((order[0].present.float() * weight).max())
    for u in order:
        if used + len(u.ids) > budget_tokens:
            continue
        new = float(((u.present & ~covered).float() * weight).max())
        sibling = any(bool((u.present | ~p.present).all()) for p in picks)
        if not picks or sibling or (new >= min_gain * heaviest and u.score >= min_gain * first):
            picks.append(u)
            covered |= u.present
            used += len(u.ids)
    return picks


def pick_by_meaning(found: list[Unit], taken: list[Unit], budget_tokens: int) -> list[Unit]:
    """The units the retriever found (`recall.RecallLedger._by_meaning`), nearest first, beside the lexical picks
    `taken` and within the budget: what a question worded unlike its fact finds, where it shares no rare term."""
    used = sum(len(u.ids) for u in taken)
    out: list[Unit] = []
    for u in sorted(found, key=lambda u: (-u.similarity, u.start)):
        if used + len(u.ids) > budget_tokens or any(u.start < t.end and t.start < u.end for t in taken + out):
            continue
        out.append(u)
        used += len(u.ids)
    return out


def hop_query(picks: list[Unit], query: Query, kinds: TokenKinds) -> Query | None:
    """The next hop's terms: the pairs of word tokens in the picks that the question lacks (with their tokens,
    so the archive's spans that hold them are found); None when there are none."""
    asked = set(query.pairs)
    word = lambda t: 0 <= t < len(kinds.word) and bool(kinds.word[t])  # noqa: E731
    pairs = [p for u in picks for p, c in zip(zip(u.ids[:-1], u.ids[1:]), _pairs(query.canonical(torch.tensor(u.ids))))
             if c not in asked and word(p[0]) and word(p[1])]
    if not pairs:
        return None
    pairs = list(dict.fromkeys(pairs))
    return Query(sorted({t for p in pairs for t in p}), pairs)


def hop_units(found: list[Unit], picks: list[Unit], hop: Query, asked: Query, max_df: int,
              min_gain: float) -> list[Unit]:
    """The units of a hop's search worth following: those holding a pair of the picks that recurs in a few
    places only (in 2..max_df + 1 units, the picks included), whose tokens are that rare too, in another part
    of the sentence than in the pick (a name assigned there, used here: `VAR B = VAR A` after `VAR A = 5`;
    a look-alike repeats its template's words in the same place), and that are no look-alikes of the first
    pick by the question's own terms (weighing less than `min_gain` of it)."""
    n_tok = len(hop.tokens)
    if not found or not picks:
        return []
    taken = {u.start for u in picks}
    everywhere = found + [u for u in picks if u.start not in {f.start for f in found}]
    holders = hop.presence(_rows([u.ids for u in everywhere]))[:, n_tok:].sum(0)
    token_df = dict(zip(hop.tokens.tolist(), hop.df.tolist()))
    rare_tokens = torch.tensor([max(token_df[a], token_df[b]) <= 2 * (max_df + 1) for a, b in hop.pairs])
    rare = (holders >= 2) & (holders <= max_df + 1) & rare_tokens
    rare_pairs = [p for p, r in zip(hop.pairs, rare.tolist()) if r]
    where = {p: _place(u.ids, p) for u in picks for p in rare_pairs if _place(u.ids, p) >= 0}
    follow = [u for u in found if u.start not in taken
              and any(abs(_place(u.ids, p) - at) >= 0.25 for p, at in where.items() if _place(u.ids, p) >= 0)]
    if not follow:
        return []
    asked_score = (asked.presence(_rows([u.ids for u in follow])).float() * asked.weight).sum(1)
    return [u for u, a in zip(follow, asked_score.tolist()) if a < min_gain * picks[0].score]


def _pair_codes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One int64 per consecutive pair of ids (token or word ids, below 2**31; -1 padding never matches a real pair)."""
    return a.long() * (1 << 32) + b.long()


def _in_vocab(ids: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(known, safe) of token ids: whether each is a vocabulary id (not -1 padding or an added token past the
    tables), and the ids as long with the others set to 0, fit to index [vocab] tables (mask with `known`)."""
    ids = ids.long()
    known = (ids >= 0) & (ids < vocab)
    return known, torch.where(known, ids, 0)


def _pairs(ids: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(ids[:-1].tolist(), ids[1:].tolist()))


def _place(ids: list[int], pair: tuple[int, int]) -> float:
    """Where in `ids` the pair first occurs, as a share of its length (-1: nowhere)."""
    for i in range(len(ids) - 1):
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            return i / max(1, len(ids) - 1)
    return -1.0


def _rows(pieces: list[list[int]] | list[torch.Tensor]) -> torch.Tensor:
    """Token-id rows padded with -1 into one [n, longest] tensor."""
    rows = torch.full((len(pieces), max(len(p) for p in pieces)), -1, dtype=torch.int32)
    for i, p in enumerate(pieces):
        rows[i, :len(p)] = torch.as_tensor(p, dtype=torch.int32)
    return rows
