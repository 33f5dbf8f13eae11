"""The recall archive: its bytes fixed by the config (cache.recall_bytes, or the older cache.recall_tokens), the
lowest-salience spans giving way past them, and the disk-backed archive (cache.recall_path) that grows with the
stream, reads back what it stored and survives its writer."""
from __future__ import annotations

import gc
import json
import random

import pytest
import torch

from symphony.config import CacheConfig, load_config, preset_names, recall_span_nbytes
from symphony.errors import SymphonyError
from symphony.runtime.engine import StreamingEngine
from symphony.runtime.recall import META, RecallLedger

from helpers import invoke, one_line_error, plant_and_recall


def archive(led: RecallLedger, n: int, seed: int = 0, step: int = 100) -> torch.Tensor:
    """Archive positions 0..n-1 (random ids and salience) as compactions do: in steps, each re-archiving the
    previous step's tail (the ledger's spans come back every compaction). Returns the ids."""
    g = torch.Generator().manual_seed(seed)
    ids, sal = torch.randint(0, 1000, (n,), generator=g), torch.rand(n, generator=g)
    for lo in range(0, n, step):
        a, b = max(0, lo - step // 2), min(n, lo + step)
        led.add(torch.arange(a, b), ids[a:b], sal[a:b])
    return ids


def held(led: RecallLedger) -> dict[int, list[int]]:
    """start -> token ids of every archived span."""
    used = torch.nonzero(led.start >= 0)[:, 0]
    return {int(led.start[r]): led.ids[r].tolist() for r in used}


def test_archive_bytes_are_fixed_by_the_config_at_any_length():
    c = load_config("tiny", ["cache.recall_bytes=64KB"]).cache
    sizes = []
    for n in (2_000, 20_000):
        led = RecallLedger.for_cache(c)
        archive(led, n)
        sizes.append(led.nbytes())
    assert sizes[0] == sizes[1] == c.recall_nbytes() <= 64 * 1024
    assert c.recall_nbytes() == c.recall_spans() * (4 * c.span_len + 12)  # ids int32; start int64, score float32
    assert len(led) == c.recall_spans()  # the long stream filled it; the short one did not


def test_default_archive_covers_a_million_tokens_in_a_few_mb():
    for cfg in [load_config(p) for p in preset_names()] + [load_config("tiny", ["cache.span_len=4"])]:
        c = cfg.cache
        assert c.recall_spans() * c.span_len >= 1 << 20, cfg.preset
        assert c.recall_nbytes() <= 8 << 20
    assert CacheConfig().recall_spans() * 16 == 1_766_016


def test_past_the_cap_the_highest_salience_spans_stay():
    c = load_config("tiny", [f"cache.recall_bytes={8 * recall_span_nbytes(4)}", "cache.span_len=4"]).cache
    led = RecallLedger.for_cache(c)
    assert led.n_spans == 8
    rng = random.Random(0)
    scores = {s: rng.random() for s in range(0, 400, 4)}
    for s, score in scores.items():
        led.add(torch.arange(s, s + 4), torch.arange(s, s + 4), torch.full((4,), score))
    best = sorted(scores, key=scores.get, reverse=True)[:8]
    assert set(held(led)) == set(best)
    assert all(ids == list(range(s, s + 4)) for s, ids in held(led).items())


def test_search_judges_a_bounded_set_of_spans():
    """Every span shares the question's common words; the spans holding its rare ones win the few places."""
    led = RecallLedger(40_000, 8)
    ids = torch.randint(100, 120, (40_000,), generator=torch.Generator().manual_seed(0))
    ids[20_004:20_008] = torch.tensor([7, 8, 9, 10])
    led.add(torch.arange(40_000), ids, torch.zeros(40_000))
    question = [100, 101, 8, 9, 102]
    every = led.search(question, 64, max_candidates=10**9)
    run = every[0]
    assert any(run[k:k + 4] == [7, 8, 9, 10] for k in range(len(run)))
    assert led.search(question, 64, max_candidates=4) == every


def test_old_recall_tokens_key_still_sizes_the_archive_and_0_turns_it_off(tiny_loaded):
    c = load_config("tiny", ["cache.recall_tokens=4096"]).cache
    assert c.recall_spans() == 4096 // 8 and RecallLedger.for_cache(c).nbytes() == c.recall_nbytes()
    for off in ("cache.recall_tokens=0", "cache.recall_bytes=0"):
        cfg = load_config("tiny", [off])
        eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
        stream = eng.new_stream()
        eng.ingest(stream, torch.randint(0, 250, (600,)))
        assert stream.recall is None, off
        assert f"recall archive: off ({off})" in invoke("info", "-c", "tiny", "--set", off).stdout


@pytest.mark.parametrize("value, match", [("lots", "'cache.recall_bytes' must be a size"),
                                          ("10", "at least one span"),
                                          (-1, "'cache.recall_bytes' must be a size")])
def test_bad_recall_bytes_is_one_line(value, match):
    with pytest.raises(SymphonyError, match=match):
        load_config("tiny", [f"cache.recall_bytes={value}"])
    assert "cache.recall_bytes" in one_line_error(invoke("info", "-c", "tiny", "--set", f"cache.recall_bytes={value}"))


def test_recall_tokens_below_minus_one_is_refused():
    with pytest.raises(SymphonyError, match="'cache.recall_tokens' must be positive or 0"):
        load_config("tiny", ["cache.recall_tokens=-2"])


def test_unwritable_recall_path_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_line_error(invoke("info", "-c", "tiny", "--set", f"cache.recall_path={blocker}/archive"))
    assert "cache.recall_path" in line and str(blocker) in line


def test_disk_archive_round_trips_and_survives_its_writer(tmp_path):
    path = tmp_path / "archive"
    writer = RecallLedger(0, 8, path)
    ids = archive(writer, 30_000, seed=3)
    in_ram = RecallLedger(30_000, 8)
    archive(in_ram, 30_000, seed=3)
    spans = held(writer)
    assert spans == held(in_ram) and len(writer) == len(in_ram) == 30_000 // 8
    assert writer.end == in_ram.end == 30_000
    assert spans == {s: ids[s:s + 8].tolist() for s in range(0, 30_000, 8)}
    # bytes on disk grow with the stream, a few per token (the rows are written out ahead in blocks)
    assert 30_000 * 5.5 <= writer.nbytes() <= 30_000 * 5.5 * 1.25 + 4096 * recall_span_nbytes(8)
    question = ids[12_000:12_006].tolist()
    expected = in_ram.search(question, 64)
    assert expected and writer.search(question, 64) == expected

    # a crash before any flush: recall.json says its counts may be stale, so a reader recounts from the rows
    crashed = RecallLedger.open(path)
    assert json.loads((path / META).read_text())["dirty"] is True
    assert (len(crashed), crashed.end, crashed.span_len) == (len(writer), 30_000, 8)
    assert held(crashed) == spans and crashed.search(question, 64) == expected
    del crashed

    writer.flush()
    assert json.loads((path / META).read_text())["dirty"] is False
    archive(writer, 31_000, seed=3)  # more after the flush, then the writer is dropped without one
    del writer
    gc.collect()
    meta = json.loads((path / META).read_text())
    assert (meta["dirty"], meta["spans"], meta["end"]) == (False, 31_000 // 8, 31_000)
    reader = RecallLedger(0, 8, path)
    assert (len(reader), reader.end) == (31_000 // 8, 31_000)
    assert reader.search(question, 64) == expected
    with pytest.raises(SymphonyError, match="span_len 8, not 16"):
        RecallLedger(0, 16, path)


def test_open_refuses_a_folder_without_an_archive(tmp_path):
    with pytest.raises(SymphonyError, match="holds no recall archive"):
        RecallLedger.open(tmp_path)
    (tmp_path / META).write_text("{not json")
    with pytest.raises(SymphonyError, match="not a readable"):
        RecallLedger.open(tmp_path)


def test_engine_recalls_from_a_disk_archive(tiny_loaded, tmp_path):
    cfg = load_config("tiny", ["cache.ledger=16", "cache.window=32", "cache.segment_len=32",
                               f"cache.recall_path={tmp_path}"])
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, cfg.cache, cfg.salience)
    first, stream = eng.new_stream(), eng.new_stream()
    assert first.recall.path != stream.recall.path and first.recall.path.parent == tmp_path
    needle, recalled = plant_and_recall(eng, stream)
    assert needle.tolist() == [t for t in recalled if t in needle.tolist()]
    stream.recall.flush()
    again = RecallLedger.open(stream.recall.path)
    assert held(again) == held(stream.recall) and again.end == stream.recall.end
    assert not first.recall.path.exists()  # a stream that archived nothing left nothing on disk


def test_info_and_plan_report_the_archive(tmp_path):
    res = invoke("info", "-c", "tiny")
    assert res.exit_code == 0, res.output
    assert "recall archive: 8.00 MB in RAM, fixed: token ids of 1,525,200 tokens kept whole (5.50 B/token)" in res.stdout
    res = invoke("info", "-c", "tiny", "--set", f"cache.recall_path={tmp_path}")
    assert f"recall archive: on disk, a new folder per stream under {tmp_path}: grows 5.50 B/token" in res.stdout
    res = invoke("plan", "-c", "tiny", "--vram", "1GB")
    assert res.exit_code == 0, res.output
    assert "recall archive (host memory, not in the total): 8.00 MB in RAM" in res.stdout
