"""Helpers shared by the tests: driving the command line, seeded ids and generators, streaming tiny models."""
from __future__ import annotations

import dataclasses
import random

import torch
from click.testing import CliRunner

from symphony.cli.main import main
from symphony.runtime.engine import StreamingEngine


# ---- the command line ----------------------------------------------------------------------------------

def invoke(*args, input=None, catch_exceptions: bool = True):
    """Run `symphony ARGS...` in-process (a single list or tuple is taken as the whole argument list)."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = tuple(args[0])
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=catch_exceptions)


def one_line_error(res, ignore: tuple[str, ...] = ()) -> str:
    """The single `error: ...` line of a refused command (exit 2, no traceback); stderr lines starting with an
    `ignore` prefix (progress output) are skipped."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith(ignore or "\0")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def usage_error(res, option: str) -> str:
    """click's refusal of a bad option value: exit 2, no traceback, the error names the option."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = next(line for line in res.stderr.splitlines() if line.startswith("Error:"))
    assert option in line, res.stderr
    return line


# ---- seeded randomness and streaming -------------------------------------------------------------------

def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# small memories so the tiny model's tests stay fast
SMALL = ["memory.fhrr.holo_dim=32", "memory.chunk_size=16", "memory.titans.hidden=16"]


def ids_for(n: int, seed: int = 0) -> torch.Tensor:
    """n random token ids of the tiny vocabulary, the same for the same seed."""
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def engine(model, cfg, policy="symphony", **cache) -> StreamingEngine:
    """A streaming engine over `model` with cfg's cache, overridden by `cache` keys."""
    return StreamingEngine(model, None, dataclasses.replace(cfg.cache, **cache), cfg.salience, policy=policy)


def segment_logits(eng: StreamingEngine, stream, ids: torch.Tensor) -> torch.Tensor:
    """Ingest ids into stream; the logits of every segment, concatenated."""
    out = []
    eng.ingest(stream, ids, on_segment=lambda s, seg, logits: out.append(logits.clone()))
    return torch.cat(out)


def plant_and_recall(eng: StreamingEngine, stream):
    """Stream 600 characters of haystack with a needle word at 300 (characters the haystack never uses) through a
    tiny engine whose KV cache cannot hold it; returns the needle's ids and what recall re-reads for a question
    naming it."""
    import random

    rng = random.Random(1)
    hay = eng.encode("".join(rng.choice("abcdefghij ") for _ in range(600)))
    needle = eng.encode("QZXJVK")
    space = eng.encode(" ")
    eng.ingest(stream, torch.cat([hay[:300], space, needle, space, hay[300:]]))
    assert not torch.isin(needle, stream.cache.token_ids).all()  # the KV cache alone lost it
    return needle, eng.recalled(stream, "what is QZXJVK?")


# -- a toy vocabulary for recall tests: hay tokens 100..199 start with a space, DOT ends a sentence -----------
DOT = 16
TEMPLATE = [11, 12, 13, 14]  # "The secret number for the"


def toy_kinds(vocab: int = 300):
    """Token kinds of the toy vocabulary: DOT ends a sentence; hay (100..) and names (60..99) are words."""
    from symphony.runtime.facts import TokenKinds

    punct = torch.zeros(vocab, dtype=torch.bool)
    punct[DOT] = True
    space = torch.zeros(vocab, dtype=torch.bool)
    space[50:] = True  # names, words and hay start with a space
    space[11] = True
    word = torch.zeros(vocab, dtype=torch.bool)
    word[60:] = True
    return TokenKinds(torch.zeros(vocab, dtype=torch.bool), punct, space, word)


KINDS = toy_kinds()


def hay(n: int, seed: int = 0) -> torch.Tensor:
    """n random hay tokens (100..199), a sentence end every 10 or so."""
    rng = random.Random(seed)
    return torch.tensor([DOT if rng.random() < 0.1 else rng.randrange(100, 200) for _ in range(n)])
