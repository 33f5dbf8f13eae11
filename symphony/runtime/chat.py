"""The chat side of the engine: questions with recall, one-shot answers, multi-turn sessions, and reading a
document of any size as text pieces. Everything here drives a `StreamingEngine` through its public calls
(ingest, decode, encode); the engine offers `answer`, `ask`, `recalled` and `chat_format` as shortcuts."""
from __future__ import annotations

import codecs
import io
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

import torch
from tqdm.auto import tqdm

from symphony.runtime.chat_format import ChatFormat
from symphony.runtime.facts import TokenKinds
from symphony.runtime.stream import Stream, peak_memory_bytes

if TYPE_CHECKING:
    from symphony.runtime.engine import StreamingEngine


def chat_format(engine: StreamingEngine) -> ChatFormat:
    """The chat template's pieces for the engine's tokenizer, rendered once per engine."""
    fmt = getattr(engine, "_chat_format", None)
    if fmt is None:
        fmt = engine._chat_format = ChatFormat.from_tokenizer(engine.tokenizer)
    return fmt


def token_kinds(engine: StreamingEngine) -> TokenKinds:
    """Which of the engine's tokens end sentences or lines, or are words (recall reads them), once per engine."""
    kinds = getattr(engine, "_token_kinds", None)
    if kinds is None:
        kinds = engine._token_kinds = TokenKinds.from_tokenizer(engine.tokenizer)
    return kinds


def line_break(engine: StreamingEngine) -> list[int]:
    """The token ids of "\\n": what separates re-read facts (and ends a copy), once per engine."""
    ids = getattr(engine, "_line_break", None)
    if ids is None:
        ids = engine._line_break = engine.encode("\n").tolist()
    return ids


def recalled(engine: StreamingEngine, stream: Stream, query: str) -> list[int]:
    """Token ids of evicted spans relevant to `query`, ready to re-read (empty without a recall ledger)."""
    if stream.recall is None or len(stream.recall) == 0:
        return []
    # the window's document text competes with the archive (a fact still there is re-read from there)
    pos, ids = stream.cache.positions, stream.cache.token_ids
    stream.conversation = [(a, b) for a, b in stream.conversation if b > stream.recall.end]
    document = torch.ones_like(pos, dtype=torch.bool)
    for a, b in stream.conversation:
        document &= (pos < a) | (pos >= b)
    c = engine.cache_cfg
    query_ids = engine.encode(query).tolist()
    retriever = engine.retriever if stream.recall.summary_dim else None
    runs = stream.recall.search(query_ids, c.recall_budget, min_gain=c.recall_min_gain,
                                live=(pos[document], ids[document]), kinds=token_kinds(engine),
                                hops=c.recall_hops,
                                query_summary=engine.question_summary(query_ids) if retriever is not None else None,
                                min_similarity=float(retriever.min_similarity) if retriever is not None else 0.5)
    sep = line_break(engine)
    return [t for run in runs for t in run + sep]


def ask(engine: StreamingEngine, stream: Stream, text: str, after: str) -> None:
    """Feed a user message's text (preceded by any recalled spans) and the template's closing."""
    spans = recalled(engine, stream, text)
    stream.reread, stream.reply_prefix = spans, []
    start = stream.tokens_seen
    if spans:
        engine.ingest(stream, spans + line_break(engine))
    engine.ingest(stream, engine.encode(text + after))
    if stream.recall is not None:  # only recall reads it (and prunes it to the window)
        stream.conversation.append((start, stream.tokens_seen))


def answer(engine: StreamingEngine, question: str, document: str | list[int] | torch.Tensor | None = None,
           stream: Stream | None = None, max_new_tokens: int = 64, desc: str = "document", reply_prefix: str = "",
           **sampling) -> str:
    """Stream `document` (text or token ids) then `question` as one user message through the chat
    template, and reply. `reply_prefix` starts the reply (RULER's answer prefix, "The special magic number
    for X is"); the text returned is what the model wrote after it."""
    stream = stream or engine.new_stream()
    before, after = chat_format(engine).first_user
    engine.ingest(stream, engine.encode(before))
    if document is not None and len(document):
        engine.ingest(stream, engine.encode(document) if isinstance(document, str) else document, desc=desc)
        question = "\n\n" + question
    ask(engine, stream, question, after)
    if reply_prefix:
        stream.reply_prefix = engine.encode(reply_prefix).tolist()
        engine.ingest(stream, torch.tensor(stream.reply_prefix))
    return engine.tokenizer.decode(engine.decode(stream, max_new_tokens, **sampling), skip_special_tokens=True)


class ChatSession:
    """A multi-turn constant-memory conversation: every turn streams through the same bounded cache."""

    def __init__(self, engine: StreamingEngine, task_id: int = 0):
        self.engine = engine
        self.stream = engine.new_stream(task_id)
        self.turns = 0
        self._document_pending: list[Path] = []

    def preload(self, path: str | Path) -> None:
        """The document (a path, or `-` for standard input) becomes the start of the first user message."""
        self._document_pending.append(Path(path))

    def say(self, text: str, max_new_tokens: int = 256, on_token: Callable[[int], None] | None = None,
            **sampling) -> str:
        eng, fmt = self.engine, chat_format(self.engine)
        before, after = fmt.first_user if self.turns == 0 else fmt.next_user
        if self.turns > 0:
            eng.ingest(self.stream, eng.encode(fmt.after_reply))  # close the previous reply
        eng.ingest(self.stream, eng.encode(before))
        for path in self._document_pending:
            eng.ingest_text_chunks(self.stream, iter_text_file(path), source_size(path),
                                   desc="stdin" if str(path) == "-" else path.name)
            eng.ingest(self.stream, eng.encode("\n\n"))
        self._document_pending = []
        ask(eng, self.stream, text, after)
        reply = eng.decode(self.stream, max_new_tokens, on_token=on_token, **sampling)
        self.turns += 1
        return eng.tokenizer.decode(reply, skip_special_tokens=True)

    def status(self) -> dict:
        st = {
            "tokens_seen": self.stream.tokens_seen,
            "cache_slots": self.stream.occupied,
            "cache_bytes": self.stream.nbytes(),
            "peak_bytes": peak_memory_bytes(self.engine.device),
        }
        switches = self.stream.page_switches()
        if switches:  # Titans manifold paging: {layer: page switches}
            st["page_switches"] = switches
        return st


def iter_text_file(path: str | Path, chunk_chars: int = 1 << 16,
                   on_replaced: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a text file (`-`: standard input) in pieces of about `chunk_chars`, cut at whitespace so no token is split between
    pieces; text with no whitespace (minified code, CJK) is cut at the bound instead, so no piece ever holds
    more than two blocks. Bytes that are not UTF-8 become U+FFFD, and `on_replaced` (default: a line on stderr)
    hears about it once."""
    carry = ""
    with _open_text(path) as f:
        before = _replaced[0]
        while True:
            block = f.read(chunk_chars)
            if not block:
                break
            text = carry + block
            cut = max(text.rfind(" "), text.rfind("\n"))
            if cut <= 0:
                if len(text) < 2 * chunk_chars:
                    carry = text
                    continue
                cut = len(text)  # no whitespace for two blocks: the byte bound decides
            carry = text[cut:]
            yield text[:cut]
        replaced = _replaced[0] - before
    if carry:
        yield carry
    if replaced:
        (on_replaced or _to_stderr)(f"note: {path} is not valid UTF-8; {replaced:,} undecodable byte(s) were read "
                                    "as U+FFFD")


@contextmanager
def _open_text(path: str | Path) -> Iterator[IO[str]]:
    """The file as UTF-8 text, undecodable bytes counted; `-` is standard input (left open for others)."""
    if str(path) != "-":
        with open(path, encoding="utf-8", errors=_COUNTED_REPLACE) as f:
            yield f
        return
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors=_COUNTED_REPLACE)
    try:
        yield stdin
    finally:
        stdin.detach()


def source_size(path: str | Path) -> int | None:
    """Bytes to read from `path`, for a progress bar (None for standard input)."""
    return None if str(path) == "-" else Path(path).stat().st_size


def _to_stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


_COUNTED_REPLACE = "symphony-counted-replace"
_replaced = [0]  # undecodable bytes replaced so far, by any reader


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error(_COUNTED_REPLACE, _count_and_replace)
