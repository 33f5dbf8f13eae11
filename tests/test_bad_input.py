"""Bad input and faults on the command line, the config and the model files: each is one clear line (exit 2),
never a traceback, never a silently wrong result. docs/BAD_INPUT.md lists what the user sees for each."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from helpers import invoke, one_line_error, usage_error
from symphony.config import load_config
from symphony.errors import SymphonyError


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("The harbour master keeps the ledger of ships. " * 40)
    return path


# ---- the cache budget must keep positions inside the trained context ------------------------------------

def test_budget_past_the_context_is_refused_by_the_engine():
    from symphony.runtime.engine import engine_from_config

    cfg = load_config("tiny", ["cache.window=4000"])  # the tiny model has 512 positions
    with pytest.raises(SymphonyError, match=r"past the model's 512-token context.*cache\.window="):
        engine_from_config(cfg, progress=False)


@pytest.mark.parametrize("command", [["info"], ["generate", "-p", "What is kept?"], ["chat"]])
def test_budget_past_the_context_is_one_line(command, doc):
    extra = ["--file", doc] if command[0] in ("generate", "chat") else []
    line = one_line_error(invoke(*command, "-c", "tiny", "--set", "cache.window=4000", *extra, input="hi\n"))
    assert "512-token context" in line


def test_suggested_budget_fits():
    from symphony.runtime.engine import engine_from_config

    with pytest.raises(SymphonyError) as ei:
        engine_from_config(load_config("tiny", ["cache.window=4000"]), progress=False)
    fix = str(ei.value).rsplit("--set ", 1)[1]
    engine_from_config(load_config("tiny", [fix]), progress=False)  # the printed fix is accepted


# ---- text input --------------------------------------------------------------------------------------

def test_whitespace_free_text_is_cut_at_a_bound(tmp_path):
    from symphony.runtime.chat import iter_text_file

    path = tmp_path / "minified.txt"
    text = "abcdefghij" * 20_000  # 200 KB on one line, no whitespace
    path.write_text(text)
    pieces = list(iter_text_file(path, chunk_chars=4096))
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 2 * 4096


_PEAK = """
import resource, sys, torch
from symphony.config import load_config
from symphony.runtime.chat import iter_text_file
from symphony.runtime.engine import engine_from_config
eng = engine_from_config(load_config("tiny"), progress=False)
eng.feed = lambda stream, ids, all_logits=False: None  # measure reading + tokenising, not the model
eng.compact = lambda stream: None
eng.ingest = lambda stream, ids, desc=None, on_segment=None: None
eng.ingest_text_chunks(eng.new_stream(), iter_text_file(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_whitespace_free_input_streams_at_the_peak_of_spaced_input(tmp_path):
    spaced, dense = tmp_path / "spaced.txt", tmp_path / "dense.txt"
    spaced.write_text("abcdefgh " * 450_000)  # 4 MB each
    dense.write_text("abcdefghi" * 450_000)

    def peak(path) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert peak(dense) <= 1.10 * peak(spaced)


def test_undecodable_bytes_are_reported_once(tmp_path):
    from symphony.runtime.chat import iter_text_file

    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 3)
    notes: list[str] = []
    text = "".join(iter_text_file(path, on_replaced=notes.append))
    assert text.count("\ufffd") == 6
    assert len(notes) == 1 and "not valid UTF-8" in notes[0] and "6 undecodable" in notes[0]
    clean = tmp_path / "clean.txt"
    clean.write_text("caf\u00e9 \ufffd literal")
    notes.clear()
    assert "".join(iter_text_file(clean, on_replaced=notes.append)) == "caf\u00e9 \ufffd literal"
    assert notes == []


def test_generate_says_when_the_file_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    res = invoke("generate", "-c", "tiny", "--file", path, "-p", "What?", "--max-new-tokens", 2)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("not valid UTF-8") == 1


def test_non_utf8_chat_script_is_one_line(tmp_path):
    script = tmp_path / "turns.txt"
    script.write_bytes("hello\nqu\u00e9 tal\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(invoke("chat", "-c", "tiny", "--script", script, "--max-new-tokens", 2))


def test_non_utf8_chat_stdin_is_one_line():
    res = invoke("chat", "-c", "tiny", "--max-new-tokens", 2, input="hello\nqu\u00e9\n".encode("latin-1"))
    assert "standard input is not UTF-8" in one_line_error(res)


# ---- sampling and command options --------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--top-p", "5"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
])
def test_bad_sampling_values_are_refused(args, option, doc):
    usage_error(invoke("generate", "-c", "tiny", "--file", doc, "-p", "What?", *args), option)


def test_empty_prompt_is_refused(doc):
    assert "--prompt is empty" in one_line_error(invoke("generate", "-c", "tiny", "--file", doc, "-p", "  "))


def test_demo_length_too_short_is_refused():
    usage_error(invoke("demo", "-c", "tiny", "--length", 10), "--length")


def test_ctrl_c_while_importing_is_one_line(monkeypatch, capsys):
    import builtins

    from symphony.cli import entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "symphony.cli.main":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as ei:
        entry.main()
    assert ei.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted while starting; nothing was done"


# ---- config files and values -------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"- model\n- cache\n", "must be a YAML mapping"),
    (b"model:\n  name: caf\xe9\n", "not UTF-8"),
    (b"42\n", "must be a YAML mapping"),
])
def test_bad_yaml_files(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(SymphonyError, match=message):
        load_config(str(path))
    assert message in one_line_error(invoke("info", "-c", path))


@pytest.mark.parametrize("override", [
    "salience.novelty_table_bits=34", "salience.novelty_table_bits=64", "salience.novelty_table_bits=0",
    "calibration.tokens=0", "data.dev_samples=0", "data.train_samples=0", "train.phase4_steps=0",
    "train.phase5_steps=-1", "train.phase6_steps=0", "train.phase7_steps=0", "salience.ngram=0",
    "memory.titans.pages=0", "train.max_steps=-1",
])
def test_bad_config_values_are_one_line(override):
    key = override.split("=")[0]
    with pytest.raises(SymphonyError, match=f"'{key}' must be"):
        load_config("tiny", [override])
    assert key in one_line_error(invoke("info", "-c", "tiny", "--set", override))


# ---- model facts and files ---------------------------------------------------------------------------

def test_info_prices_the_cache_in_the_model_dtype_when_quantised():
    from symphony.models.info import kv_bytes_per_token
    from symphony.models.tiny import tiny_config
    from symphony.report import fmt_bytes, model_facts

    cfg = load_config("tiny", ["model.quantization=4bit", "model.dtype=float32"])
    facts = model_facts(cfg)
    assert facts["KV cache per token"] == f"{fmt_bytes(kv_bytes_per_token(tiny_config('tiny-llama'), 4))} (float32)"


@pytest.fixture
def tiny_dir(tmp_path):
    from symphony.models.tiny import byte_tokenizer, tiny_model

    d = tmp_path / "tiny"
    tiny_model("tiny-llama", seed=0).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def test_truncated_safetensors_is_one_line(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_line_error(invoke("generate", "--set", f"model.name={tiny_dir}", "--file", weights, "-p", "x"))
    assert "damaged" in line and str(tiny_dir) in line


def test_corrupt_gguf_is_one_line(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert "damaged" in one_line_error(invoke("info", "--set", f"model.name={bad}"))


# ---- transformers: the cache goes in under the name the installed release expects ---------------------

def test_generate_run_emits_no_future_warning(doc):
    from symphony.config import load_config
    from symphony.runtime.chat import ChatSession
    from symphony.runtime.engine import engine_from_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = engine_from_config(load_config("tiny"), progress=False)
        session = ChatSession(engine)
        session.preload(doc)
        session.say("What is kept?", 4)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


# ---- output locations are checked before any work ----------------------------------------------------

@pytest.mark.parametrize("command", [["run-phase", "1"], ["pipeline"]])
def test_unwritable_run_dir_fails_before_work(tmp_path, monkeypatch, command):
    import symphony.models
    import symphony.models.loading

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the run directory was checked")

    for module in (symphony.models, symphony.models.loading):
        monkeypatch.setattr(module, "load_model", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(invoke(*command, "-c", "tiny", "-r", blocker / "run"))
    assert "cannot write to" in line and "--run-dir" in line


def test_pipeline_that_would_train_nothing_is_refused_before_work(tmp_path):
    line = one_line_error(invoke("pipeline", "-c", "tiny", "--set", "memory.kind=none", "--set", "memory.pointer=false",
                                 "-r", tmp_path / "run"))
    assert "would train nothing" in line and "--set memory.kind=titans" in line
    assert not (tmp_path / "run" / "phase1").exists()


def test_pipeline_on_the_tiny_preset_writes_final(tmp_path):
    res = invoke("pipeline", "-c", "tiny", "-r", tmp_path / "run", "--set", "train.max_steps=1")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "final" / "adapters.safetensors").is_file()
