"""`symphony eval ppl`: streaming perplexity on the tiny model; exactness against full attention, the strided
sliding window, resume."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import helpers
import symphony.evaluation.ppl as ppl_eval
from symphony.cli.main import main
from symphony.corpus import builtin_text
from symphony.evaluation.ppl import bucket_means, load_tokens, strided_nll

invoke = functools.partial(helpers.invoke, catch_exceptions=False)  # errors raise


BASE = ["eval", "ppl", "-c", "tiny"]


def load(out):
    return json.loads((out / "ppl.json").read_text())


def bucket_counts(n_tokens, bucket):
    """Scored tokens per bucket: positions 1..N-1 (position 0 is never predicted)."""
    counts = [min((i + 1) * bucket, n_tokens) - i * bucket for i in range(math.ceil(n_tokens / bucket))]
    counts[0] -= 1
    return counts


def test_ppl_end_to_end(tmp_path):
    out = tmp_path / "ppl"
    res = invoke(BASE + ["--max-tokens", "1024", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = load(out)
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["full", "sinks", "symphony"]
    for m, r in rows.items():
        assert set(r) >= {"method", "tokens", "nll", "ppl", "budget"}
        assert r["status"] == "ok" and r["tokens"] == 1024 and r["scored"] == 1023
        assert r["ppl"] == pytest.approx(math.exp(r["nll"]))
        assert 0 < r["nll"] < 2 * math.log(512)  # a random model: near uniform over the 512-token vocabulary
        per = data["per_position"][m]
        assert len(per) == 4  # 1024 tokens / buckets of 256
        counts = bucket_counts(1024, 256)
        assert sum(x * c for x, c in zip(per, counts)) / sum(counts) == pytest.approx(r["nll"], rel=1e-9)
    assert rows["full"]["mode"] == "strided" and rows["full"]["budget"] == 512  # past the tiny window of 512
    assert rows["sinks"]["budget"] == rows["symphony"]["budget"] == 4 + 64 + 128
    assert data["settings"]["tokens"] == 1024 and data["settings"]["bucket"] == 256
    png = out / "ppl.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    table = res.output[res.output.index("method"):]
    for m in rows:
        assert f"{rows[m]['ppl']:.3f}" in table


def test_bounded_caches_equal_full_when_the_text_fits(tmp_path):
    """Cache budget (444 slots, + a 64-token segment inside the 512-token context) above the text (400 tokens):
    nothing is evicted, so every method scores every token from the same context."""
    out = tmp_path / "ppl"
    res = invoke(BASE + ["--max-tokens", "400", "--bucket", "64", "--set", "cache.window=376", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = load(out)
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["full"]["mode"] == "streaming" and rows["sinks"]["budget"] > 400
    for m in ("sinks", "symphony"):
        assert rows[m]["nll"] == pytest.approx(rows["full"]["nll"], rel=1e-6, abs=1e-7)
        assert data["per_position"][m] == pytest.approx(data["per_position"]["full"], rel=1e-6, abs=1e-7)


def test_full_strided_scores_every_token_once(tmp_path):
    out = tmp_path / "ppl"
    res = invoke(BASE + ["--max-tokens", "1500", "--methods", "full", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = load(out)["rows"][0]
    assert row["mode"] == "strided" and row["scored"] == 1500 - 1
    assert (row["window"], row["stride"]) == (512, 256)
    assert row["windows"] == 1 + math.ceil((1500 - 512) / 256)


@torch.no_grad()
def test_strided_nll_matches_direct_forwards(tiny_loaded):
    """Each token is scored with the context of the window that first reaches it: windows end at
    512, 768, 1024, ... and start `window` tokens earlier. Checked against one plain forward per token."""
    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    ids = load_tokens(tok, builtin_text(), 1100)
    nll, windows = strided_nll(model, ids, window=512, stride=256, segment_len=64)
    assert nll.shape == (1099,) and not torch.isnan(nll).any() and windows == 4
    t = torch.tensor(ids)
    for token, begin in [(1, 0), (300, 0), (511, 0), (512, 256), (700, 256), (767, 256), (768, 512),
                         (1023, 512), (1024, 1100 - 512), (1099, 1100 - 512)]:
        logits = model(input_ids=t[None, begin:token]).logits[0, -1].float()
        ref = F.cross_entropy(logits[None], t[token : token + 1]).item()
        assert nll[token - 1].item() == pytest.approx(ref, rel=1e-4, abs=1e-5), (token, begin)


def test_resume_skips_finished_methods(tmp_path, monkeypatch):
    out = tmp_path / "ppl"
    args = BASE + ["--max-tokens", "300", "--out", str(out)]
    assert invoke(args + ["--methods", "full"]).exit_code == 0
    first = load(out)

    res = CliRunner().invoke(main, args + ["--methods", "full,sinks"])  # no --resume: one-line refusal
    assert res.exit_code == 2
    assert "exists; pass --resume" in res.output and len(res.output.strip().splitlines()) == 1

    res = CliRunner().invoke(main, args + ["--methods", "full,sinks", "--bucket", "100", "--resume"])
    assert res.exit_code == 2 and "different settings (bucket)" in res.output

    runs = []
    real = ppl_eval.streaming_nll
    monkeypatch.setattr(ppl_eval, "streaming_nll", lambda engine, ids: runs.append(engine.policy) or real(engine, ids))
    assert invoke(args + ["--methods", "full,sinks", "--resume"]).exit_code == 0
    assert runs == ["sinks"]  # full was not redone
    data = load(out)
    assert data["rows"][0] == first["rows"][0]
    assert data["per_position"]["full"] == first["per_position"]["full"]
    assert [r["method"] for r in data["rows"]] == ["full", "sinks"] and set(data["per_position"]) == {"full", "sinks"}


def test_over_the_memory_limit_is_recorded(tmp_path):
    out = tmp_path / "ppl"
    res = invoke(BASE + ["--max-tokens", "300", "--methods", "full,sinks", "--memory-limit", "1MB", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = load(out)["rows"]
    assert [r["status"] for r in rows] == ["over_limit", "over_limit"]  # the process alone holds more than 1 MB
    assert all(r["nll"] is None and r["projected_bytes"] > 1 << 20 for r in rows)
    assert (out / "ppl.png").exists()


def test_load_tokens_is_a_prefix_and_never_cycles(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = builtin_text()
    whole = tok(text[:200_000], add_special_tokens=False).input_ids
    assert load_tokens(tok, text, 5000) == whole[:5000]
    assert load_tokens(tok, "short text", 5000) == tok("short text", add_special_tokens=False).input_ids


def test_bucket_means_by_target_position():
    nll = torch.arange(1, 10, dtype=torch.float64)  # scores positions 1..9
    assert bucket_means(nll, 4) == [2.0, 5.5, 8.5]  # positions 1-3, 4-7, 8-9


def test_text_and_dataset_are_exclusive(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world " * 100)
    res = CliRunner().invoke(main, BASE + ["--text", str(doc), "--dataset", "wikitext", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not both" in res.output
