"""Phase 3 (dataset) on the tiny config: library and CLI, determinism, masks, idempotence, errors."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import pytest

from helpers import invoke, one_line_error
from symphony.pipeline.phases import get_phase
from symphony.config import TASKS, load_config
from symphony.pipeline.dataset import COLUMNS, load_split
from symphony.pipeline.dataset import sample_plan
from symphony.errors import SymphonyError
from symphony.models.tiny import byte_tokenizer
from symphony.pipeline.runs import manifest_path, phase_dir

# the byte tokenizer spends a token per byte: 384 leaves room for 3 distractor needles plus text
SMALL = ["data.lengths=384,768", "data.train_samples=14", "data.dev_samples=7"]  # each kind twice, once
LENGTHS = (384, 768)


def tiny(*extra):
    return load_config("tiny", [*SMALL, *extra])


def run3(cfg, run_dir, force=False):
    return get_phase(3)(cfg, run_dir, force=force, progress=False)


@pytest.fixture(scope="module")
def phase1_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("p1")
    get_phase(1)(load_config("tiny"), run_dir, progress=False)
    return run_dir


@pytest.fixture
def run_dir(phase1_dir, tmp_path):
    """A fresh run dir that has phase 1 done (copied, not recomputed)."""
    shutil.copytree(phase_dir(phase1_dir, 1), phase_dir(tmp_path, 1))
    return tmp_path


@pytest.fixture(scope="module")
def built(phase1_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("p3")
    shutil.copytree(phase_dir(phase1_dir, 1), phase_dir(run_dir, 1))
    result = run3(tiny(), run_dir)
    return run_dir, result, load_split(run_dir, "train"), load_split(run_dir, "dev")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def rows(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def keep_runs(row) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, k in enumerate(row["keep_mask"] + [0]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            runs.append((start, i))
            start = None
    return runs


# --- order and errors before anything is built ------------------------------------------------------

def test_phase3_before_phase1_names_the_command(tmp_path):
    with pytest.raises(SymphonyError, match=r"run first: symphony run-phase 1 --run-dir"):
        run3(tiny(), tmp_path)
    line = one_line_error(invoke("run-phase", 3, "-c", "tiny", "-r", tmp_path), ignore=("phase 3 dataset",))
    assert "phase 3 needs phase 1" in line and f"symphony run-phase 1 --run-dir {tmp_path}" in line
    assert not phase_dir(tmp_path, 3).exists()


def test_other_model_than_phase1_is_refused(run_dir):
    with pytest.raises(SymphonyError) as ei:
        run3(tiny("model.name=tiny-qwen2"), run_dir)
    msg = str(ei.value)
    assert "\n" not in msg and "model.name" in msg and "run-phase 1" in msg
    assert not manifest_path(run_dir, 3).exists()


def test_too_short_length_is_a_clear_error(run_dir):
    with pytest.raises(SymphonyError, match="too short") as ei:
        run3(load_config("tiny", ["data.lengths=64", "data.train_samples=6", "data.dev_samples=1"]), run_dir)
    assert "data.lengths" in str(ei.value)
    assert not manifest_path(run_dir, 3).exists()
    assert not (phase_dir(run_dir, 3) / "train").exists()


def test_load_split_missing_or_corrupt(tmp_path, built):
    with pytest.raises(SymphonyError) as ei:
        load_split(tmp_path, "train")
    msg = str(ei.value)
    assert "\n" not in msg and f"symphony run-phase 3 --run-dir {tmp_path}" in msg
    with pytest.raises(SymphonyError, match="phase 4 needs phase 3's dev split"):
        load_split(tmp_path, "dev", needed_by=4)
    with pytest.raises(SymphonyError, match="unknown dataset split"):
        load_split(built[0], "test")
    # a damaged split directory
    shutil.copytree(phase_dir(built[0], 3), phase_dir(tmp_path, 3))
    (phase_dir(tmp_path, 3) / "dev" / "state.json").write_text("{ not json")
    with pytest.raises(SymphonyError) as ei:
        load_split(tmp_path, "dev")
    msg = str(ei.value)
    assert "\n" not in msg and "corrupt" in msg and "symphony run-phase 3" in msg and "--force" in msg


def test_sample_plan_mixes_kinds_and_lengths():
    plan = sample_plan(2 * len(TASKS), list(TASKS), [1, 2])
    assert [k for k, _ in plan] == list(TASKS) * 2
    assert {length for _, length in plan[:len(TASKS)]} == {1, 2}  # one cycle of kinds already mixes lengths
    for kind in TASKS:
        assert sorted(length for k, length in plan if k == kind) == [1, 2]


# --- the built dataset ------------------------------------------------------------------------------

def test_manifest_and_layout(built):
    run_dir, result, train, dev = built
    assert result["status"] == "written" and result["name"] == "dataset" and result["phase"] == 3
    on_disk = json.loads(manifest_path(run_dir, 3).read_text())
    assert {k: v for k, v in result.items() if k != "status"} == on_disk
    assert sorted(p.name for p in phase_dir(run_dir, 3).iterdir()) == ["dev", "manifest.json", "train"]
    assert len(on_disk["fingerprint"]) == 16
    assert on_disk["columns"] == list(COLUMNS) and list(train.column_names) == list(COLUMNS)
    s = on_disk["splits"]
    assert s["train"]["samples"] == 14 == len(train) and s["dev"]["samples"] == 7 == len(dev)
    assert s["train"]["kinds"] == {k: 2 for k in TASKS} and s["dev"]["kinds"] == {k: 1 for k in TASKS}
    assert s["train"]["lengths"] == {"384": 7, "768": 7}
    assert s["train"]["tokens"] == sum(len(r["input_ids"]) for r in rows(train))
    assert s["train"]["loss_tokens"] == sum(sum(r["loss_mask"]) for r in rows(train))
    assert s["train"]["keep_tokens"] == sum(sum(r["keep_mask"]) for r in rows(train))
    ex = on_disk["example"]
    first_task = next(r for r in rows(dev) if r["question"])
    assert ex["split"] == "dev" and ex["question"] == first_task["question"] and ex["answer"] == first_task["answer"]
    assert on_disk["data"]["lengths"] == list(LENGTHS) and on_disk["tokenizer"]["model"] == "tiny-llama"


def test_every_kind_in_both_splits_at_requested_lengths(built):
    _, _, train, dev = built
    for ds in (train, dev):
        assert set(ds["kind"]) == set(TASKS)
        for r in rows(ds):
            assert r["length"] in LENGTHS
            assert abs(len(r["input_ids"]) - r["length"]) <= 4
            assert len(r["loss_mask"]) == len(r["keep_mask"]) == len(r["input_ids"])
    for kind in TASKS:  # each kind at each length in train
        assert {r["length"] for r in rows(train) if r["kind"] == kind} == set(LENGTHS)


def test_answers_aligned_with_masks(built, tok):
    _, _, train, dev = built
    eos = tok.eos_token_id
    for r in rows(train) + rows(dev):
        ids, start, n = r["input_ids"], r["answer_start"], len(r["input_ids"])
        if r["kind"] == "lm":
            assert r["answer"] == "" and r["question"] == "" and start == n
            assert set(r["loss_mask"]) == {1} and set(r["keep_mask"]) == {0}
            continue
        assert r["answer"] and r["question"]
        assert tok.decode(ids[start:], skip_special_tokens=True).startswith(r["answer"])
        assert ids[-1] == eos
        assert r["loss_mask"] == [0] * start + [1] * (n - start)
        # the question sits right before the answer, after the document
        prompt = tok.decode(ids[:start])
        assert prompt.startswith("<|im_start|>user\n")
        assert prompt.endswith("\n\n" + r["question"] + "<|im_end|>\n<|im_start|>assistant\n")
        # the kept tokens are the planted facts: inside the document, each a fact, one of them the answer
        runs = keep_runs(r)
        assert runs and all(b <= start for _, b in runs)
        texts = [tok.decode(ids[a:b]) for a, b in runs]
        assert sum(r["answer"] in t for t in texts) == 1, (r["kind"], texts)
        assert r["answer"] not in tok.decode([t for t, k in zip(ids[:start], r["keep_mask"]) if not k])
        if r["kind"] in ("needle", "multikey"):
            key = re.search(r"for the (\w+)\?", r["question"]).group(1)
            assert any(f"for the {key} is {r['answer']}." in t for t in texts)
            kept = "".join(texts)  # needles planted at the same cut form one run
            values = re.findall(r"The secret number for the \w+ is (\d{7})\.", kept)
            assert len(values) == (4 if r["kind"] == "multikey" else 1)  # data.distractors = 3
            assert len(set(values)) == len(values)
        elif r["kind"] == "passkey":
            assert re.fullmatch(r"\d{5}", r["answer"]) and f"The pass key is {r['answer']}." in texts[0]
        elif r["kind"] == "kv":
            key = re.search(r'the key "([0-9a-f-]+)"', r["question"]).group(1)
            assert f'"{key}": "{r["answer"]}"' in texts[0] and texts[0].count('": "') == 4
        elif r["kind"] == "copy":
            assert f'"{r["answer"]}"' in texts[0]
            assert runs[0][0] <= 0.45 * n  # planted early
            assert 16 <= len(tok(r["answer"], add_special_tokens=False).input_ids) <= 32


def test_haystacks_are_varied_real_text(built, tok):
    _, _, train, dev = built
    sentences = Counter()
    starts = set()
    for r in rows(train) + rows(dev):
        hay = tok.decode([t for t, k in zip(r["input_ids"][:r["answer_start"]], r["keep_mask"]) if not k])
        if r["question"]:  # the document only: between the template's opening and the question
            hay = hay.removeprefix("<|im_start|>user\n").rpartition("\n\n" + r["question"])[0]
        starts.add(hay[:60])
        sentences.update(s.strip() for s in re.split(r"(?<=[.!?])\s+", hay) if len(s.strip()) > 20)
    assert len(sentences) > 60
    assert max(sentences.values()) <= 2  # no sentence repeated throughout
    assert len(starts) == len(train) + len(dev)  # every sample from its own offset


def test_dev_never_equals_train(built, tok):
    _, _, train, dev = built
    train_ids = {tuple(r["input_ids"]) for r in rows(train)}
    assert not any(tuple(r["input_ids"]) in train_ids for r in rows(dev))
    train_text = "\n".join(tok.decode(r["input_ids"]) for r in rows(train))
    for r in rows(dev):  # dev text comes from another region of the corpus
        if r["kind"] == "lm":
            piece = tok.decode(r["input_ids"])[100:200]
            assert piece not in train_text
        else:
            assert r["answer"] not in train_text


def test_deterministic_by_seed(built, run_dir, tmp_path_factory, phase1_dir):
    _, first, train, dev = built
    again = run3(tiny(), run_dir)
    assert again["fingerprint"] == first["fingerprint"]
    assert load_split(run_dir, "train").to_dict() == train.to_dict()
    assert load_split(run_dir, "dev").to_dict() == dev.to_dict()
    other_dir = tmp_path_factory.mktemp("seed1")
    shutil.copytree(phase_dir(phase1_dir, 1), phase_dir(other_dir, 1))
    other = run3(tiny("seed=1"), other_dir)
    assert other["fingerprint"] != first["fingerprint"]
    other_train = load_split(other_dir, "train")
    assert other_train["kind"] == train["kind"]
    assert all(a != b for a, b in zip(other_train["input_ids"], train["input_ids"]))


def test_idempotent_and_refuses_other_config_without_force(run_dir):
    first = run3(tiny(), run_dir)
    manifest = manifest_path(run_dir, 3)
    before = manifest.read_bytes()
    arrow = sorted((phase_dir(run_dir, 3) / "train").glob("*.arrow"))
    mtimes = [p.stat().st_mtime_ns for p in arrow]
    again = run3(tiny(), run_dir)
    assert again["status"] == "up-to-date" and again["fingerprint"] == first["fingerprint"]
    assert manifest.read_bytes() == before
    assert [p.stat().st_mtime_ns for p in arrow] == mtimes

    with pytest.raises(SymphonyError) as ei:
        run3(tiny("data.train_samples=7"), run_dir)
    msg = str(ei.value)
    assert "\n" not in msg and "different data" in msg and "--force" in msg
    assert manifest.read_bytes() == before

    forced = run3(tiny("data.train_samples=7"), run_dir, force=True)
    assert forced["status"] == "written" and forced["splits"]["train"]["samples"] == 7
    assert len(load_split(run_dir, "train")) == 7
    assert run3(tiny("data.train_samples=7"), run_dir)["status"] == "up-to-date"


def test_failed_rebuild_keeps_the_old_dataset(run_dir, monkeypatch):
    run3(tiny(), run_dir)
    before = manifest_path(run_dir, 3).read_bytes()
    from symphony.pipeline import tasks

    calls = {"n": 0}
    real = tasks.TaskBuilder.build

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # an interruption mid-build
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tasks.TaskBuilder, "build", flaky)
    with pytest.raises(KeyboardInterrupt):
        run3(tiny("data.dev_samples=3"), run_dir, force=True)
    assert manifest_path(run_dir, 3).read_bytes() == before
    assert len(load_split(run_dir, "dev")) == 7
    assert sorted(p.name for p in phase_dir(run_dir, 3).iterdir()) == ["dev", "manifest.json", "train"]


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path):
    res = invoke("run-phase", 1, "-c", "tiny", "-r", tmp_path)
    assert res.exit_code == 0, res.output
    sets = [a for s in SMALL for a in ("--set", s)]
    res = invoke("run-phase", 3, "-c", "tiny", "-r", tmp_path, *sets)
    assert res.exit_code == 0, res.output
    assert f"phase 3 (dataset): written -> {manifest_path(tmp_path, 3)}" in res.stdout
    assert len(load_split(tmp_path, "train")) == 14 and len(load_split(tmp_path, "dev")) == 7

    res = invoke("run-phase", 3, "-c", "tiny", "-r", tmp_path, *sets)
    assert res.exit_code == 0, res.output
    assert "up-to-date" in res.stdout

    line = one_line_error(invoke("run-phase", 3, "-c", "tiny", "-r", tmp_path, *sets, "-s", "data.distractors=2"),
                          ignore=("phase 3 dataset",))
    assert "--force" in line
    res = invoke("run-phase", 3, "-c", "tiny", "-r", tmp_path, *sets, "-s", "data.distractors=2", "--force")
    assert res.exit_code == 0, res.output
    assert "written" in res.stdout
    assert json.loads(manifest_path(tmp_path, 3).read_text())["data"]["distractors"] == 2


# --- a real tokenizer -------------------------------------------------------------------------------

@pytest.mark.real_model
def test_tasks_with_the_embedded_tokenizer(embedded_model_dir):
    import random

    from symphony.config import ModelConfig
    from symphony.corpus import builtin_text
    from symphony.pipeline.tasks import TaskBuilder, corpus_words
    from symphony.models.loading import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="smollm2-135m"))
    text = builtin_text()[:200_000]
    builder = TaskBuilder(tok, tok(text, add_special_tokens=False).input_ids, corpus_words(text))
    for i, kind in enumerate(TASKS):
        s = builder.build(kind, random.Random(i), 512, distractors=3)  # builder.check verifies alignment
        assert len(s.input_ids) == 512
        if kind != "lm":
            assert tok.decode(s.input_ids[s.answer_start:], skip_special_tokens=True).startswith(s.answer)
            assert s.input_ids[-1] == tok.eos_token_id
            assert s.answer in tok.decode([t for t, k in zip(s.input_ids, s.keep_mask) if k])
            start, end, doc_end = s.retrieval  # the asked fact, where the retriever trains to find it
            assert s.answer in tok.decode(s.input_ids[start:end]) and end <= doc_end < s.answer_start
            assert s.question in tok.decode(s.input_ids[doc_end:s.answer_start])
        if kind == "paraphrase":  # worded unlike its fact: no shared word but the name
            import re

            words = lambda t: set(re.findall(r"[a-z]{4,}", t.lower()))  # noqa: E731
            fact, question = tok.decode(s.input_ids[start:end]), s.question
            assert len(words(fact) & words(question)) == 1, (fact, question)
