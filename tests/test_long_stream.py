"""benchmarks/long_stream.py's inputs: every cell's needles planted in one stream, keys distinct, each length's
facts before that length (the benchmark itself runs for an hour; its smoke run: `-c tiny --lengths 2k,4k`)."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("long_stream", Path(__file__).parents[1] / "benchmarks" / "long_stream.py")
long_stream = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(long_stream)


def test_needles_have_distinct_keys_and_sit_before_their_length():
    planted = long_stream.plan_needles(random.Random(0), [128 << 10, 512 << 10, 1 << 20], [10, 50, 90], 3)
    assert len(planted) == 36 and len({p[2].key for p in planted}) == 36
    assert [p[1] for p in planted if p[3]][:3] == [13107, 65536, 117964]
    assert all(0 < p[1] < 0.95 * p[0] for p in planted)


@pytest.mark.real_model
def test_the_stream_holds_every_sentence_where_it_says(embedded_model_dir):
    from transformers import AutoTokenizer

    from symphony.corpus import builtin_text

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    planted = long_stream.plan_needles(random.Random(1), [2048, 4096], [10, 50, 90], 2)
    ids, starts = long_stream.build_stream(tok, builtin_text(), 4096, planted)
    assert len(ids) == 4096
    for (n, _, needle, _), start in zip(planted, starts):
        sentence = tok(needle.sentence, add_special_tokens=False).input_ids
        assert ids[start:start + len(sentence)] == sentence and start + len(sentence) <= n
