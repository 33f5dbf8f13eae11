"""Phase 3 logic: build the train/dev datasets (Hugging Face `datasets` Arrow) and the manifest.

Layout: DIR/phase3/train/ and DIR/phase3/dev/ (`Dataset.save_to_disk`) and DIR/phase3/manifest.json, built
aside and moved into place together: a manifest always describes the splits beside it. Samples are
deterministic by `seed`: sample i of a split draws from its own generator (seeded by split, seed and i);
kinds cycle through `data.tasks` and lengths through `data.lengths` (see `sample_plan`).
Train and dev take their text from disjoint regions of the corpus (dev: the tail), so no dev
haystack overlaps a train one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from collections import Counter
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from symphony.config import ModelConfig, SymphonyConfig, parse_int_list, parse_list, validate
from symphony.corpus import load_text
from symphony.pipeline.tasks import MAX_MULTIKEY_DISTRACTORS, Sample, TaskBuilder, corpus_words
from symphony.errors import SymphonyError
from symphony.pipeline.runs import (
    PhaseRun, fingerprint, manifest_path, phase_command, phase_dir, read_manifest, write_manifest,
)

PHASE = 3
DATA_VERSION = 3  # bump when the sample format changes: old datasets then need --force
SPLITS = ("train", "dev")
COLUMNS = ("input_ids", "loss_mask", "keep_mask", "kind", "answer", "answer_start", "question", "length", "retrieval")
REQUIRED = COLUMNS[:-1]  # a dataset built before `retrieval` (version 1) still trains everything but the retriever
DEV_FRACTION = 0.1  # dev haystacks come from the corpus's last tenth (at least one sample's worth)


def features():
    from datasets import Features, List, Value

    return Features({
        "input_ids": List(Value("int32")),
        "loss_mask": List(Value("int8")),
        "keep_mask": List(Value("int8")),
        "kind": Value("string"),
        "answer": Value("string"),
        "answer_start": Value("int32"),
        "question": Value("string"),
        "length": Value("int32"),
        "retrieval": List(Value("int32")),
    })


def phase3_fingerprint(cfg: SymphonyConfig, phase1_fp: str) -> str:
    return fingerprint({"version": DATA_VERSION, "phase1": phase1_fp, "data": dataclasses.asdict(cfg.data),
                        "seed": cfg.seed, "model": cfg.model.name})


def sample_plan(n: int, tasks: list[str], lengths: list[int]) -> list[tuple[str, int]]:
    """(kind, length) of samples 0..n-1: kinds cycle; lengths cycle too, shifted by one after each cycle of
    kinds, so that one cycle already mixes lengths and every kind meets every length."""
    t, n_len = len(tasks), len(lengths)
    return [(tasks[i % t], lengths[(i % t + i // t) % n_len]) for i in range(n)]


def sample_rng(split: str, seed: int, i: int) -> random.Random:
    return random.Random(f"symphony-phase3:{split}:{seed}:{i}")


def split_regions(ids: list[int], longest: int) -> dict[str, list[int]]:
    """Disjoint corpus regions for train and dev: dev gets the tail (a tenth, at least `longest` tokens,
    at most half)."""
    n_dev = min(len(ids) // 2, max(int(len(ids) * DEV_FRACTION), longest))
    if n_dev < 1:
        raise SymphonyError(f"the data source has only {len(ids)} tokens; phase 3 needs a longer text (data.source)")
    return {"train": ids[: len(ids) - n_dev], "dev": ids[len(ids) - n_dev:]}


def generate(builder: TaskBuilder, split: str, n: int, seed: int, tasks: list[str], lengths: list[int],
             distractors: int) -> Iterator[Sample]:
    for i, (kind, length) in enumerate(sample_plan(n, tasks, lengths)):
        yield builder.build(kind, sample_rng(split, seed, i), length, distractors)


def check_data_config(cfg: SymphonyConfig) -> tuple[list[str], list[int]]:
    validate(cfg)  # the counts (samples, distractors) are config.validate's; only what depends on the tasks is here
    d = cfg.data
    tasks = parse_list(d.tasks, "data.tasks")
    lengths = parse_int_list(d.lengths, "data.lengths")
    if "multikey" in tasks and d.distractors > MAX_MULTIKEY_DISTRACTORS:
        raise SymphonyError(f"config key 'data.distractors' must be at most {MAX_MULTIKEY_DISTRACTORS} with the"
                            f" multikey task; got {d.distractors}")
    return tasks, lengths


def check_phase1_model(cfg: SymphonyConfig, phase1: dict, run_dir) -> ModelConfig:
    """The model phase 1 froze; this config must name the same one."""
    recorded = (phase1.get("config") or {}).get("model")
    if not isinstance(recorded, dict):
        return cfg.model
    mine = dataclasses.asdict(cfg.model)
    diff = [f"model.{k}={recorded.get(k)!r} there, {v!r} here" for k, v in mine.items() if recorded.get(k) != v]
    if diff:
        raise SymphonyError(
            f"phase 1 in {run_dir} was made with another model config ({'; '.join(diff)}); use the same -c/--set"
            f" options as phase 1, or redo it: {phase_command(run_dir, 1, cfg, force=True)}"
        )
    return ModelConfig(**{k: recorded[k] for k in mine if k in recorded})


def write_split(samples: Iterator[Sample], tmp: Path, split: str, bar) -> dict:
    """Stream samples into an Arrow file, save it as a `datasets` directory under `tmp`; its statistics."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    stats: dict = {"samples": 0, "tokens": 0, "loss_tokens": 0, "keep_tokens": 0, "kinds": Counter(),
                   "lengths": Counter()}
    raw = tmp / f"{split}.arrow"
    writer = ArrowWriter(features=features(), path=str(raw))
    try:
        for s in samples:
            writer.write(s.row())
            stats["samples"] += 1
            stats["tokens"] += len(s.input_ids)
            stats["loss_tokens"] += sum(s.loss_mask)
            stats["keep_tokens"] += sum(s.keep_mask)
            stats["kinds"][s.kind] += 1
            stats["lengths"][str(s.length)] += 1
            bar.update(1)
        writer.finalize()
    finally:
        writer.close()
    ds = Dataset.from_file(str(raw))
    with _quiet_datasets():
        ds.save_to_disk(str(tmp / split))
    del ds
    raw.unlink()
    stats["kinds"] = dict(stats["kinds"])
    stats["lengths"] = dict(stats["lengths"])
    stats["path"] = split
    return stats


def build_dataset(cfg: SymphonyConfig, run_dir: str | Path, force: bool = False, progress: bool = True) -> dict:
    tasks, lengths = check_data_config(cfg)
    phase1 = read_manifest(run_dir, 1, needed_by=PHASE, config=cfg)
    model_cfg = check_phase1_model(cfg, phase1, run_dir)
    fp = phase3_fingerprint(cfg, str(phase1.get("fingerprint")))
    run = PhaseRun(run_dir, PHASE, fp, "a different data/model config", cfg, dirs=SPLITS)
    if (done := run.up_to_date(force)) is not None:
        return done

    from symphony.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_cfg)
    text = load_text(cfg.data.source)
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    regions = split_regions(ids, max(lengths))
    words = corpus_words(text)
    counts = {"train": cfg.data.train_samples, "dev": cfg.data.dev_samples}

    # both splits and the manifest are built aside and replace DIR/phase3 at once: a failed or interrupted
    # rebuild leaves the previous dataset whole, and a run dir never pairs a manifest with other splits
    with run.stage() as stage:
        splits = {}
        with tqdm(total=sum(counts.values()), desc="phase 3 dataset", unit="sample", disable=not progress) as bar:
            for split in SPLITS:
                builder = TaskBuilder(tokenizer, regions[split], words, split)
                samples = generate(builder, split, counts[split], cfg.seed, tasks, lengths, cfg.data.distractors)
                splits[split] = write_split(samples, stage, split, bar)
        body = {
            "name": "dataset",
            "fingerprint": fp,
            "phase1_fingerprint": phase1.get("fingerprint"),
            "config": cfg.to_dict(),
            "data": {**dataclasses.asdict(cfg.data), "tasks": tasks, "lengths": lengths, "version": DATA_VERSION},
            "seed": cfg.seed,
            "tokenizer": {"model": model_cfg.name, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                          "eos_token": tokenizer.eos_token, "corpus_tokens": len(ids),
                          "region_tokens": {s: len(r) for s, r in regions.items()}},
            "columns": list(COLUMNS),
            "splits": splits,
            "example": _example(stage),
        }
        write_manifest(run_dir, PHASE, body, into=stage)
    return run.result()


@contextlib.contextmanager
def _quiet_datasets():
    """No "Saving the dataset" bars from `datasets`: phase 3 shows its own progress."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _example(tmp: Path) -> dict:
    """The first dev task sample (a question and its answer) as the manifest's example; else the first sample."""
    from datasets import load_from_disk

    rows = []
    for split in ("dev", "train"):
        ds = load_from_disk(str(tmp / split))
        rows += [(split, ds[i]) for i in range(min(len(ds), 32))]
    if not rows:
        return {}
    split, row = next(((s, r) for s, r in rows if r["question"]), rows[0])
    return {"split": split, "kind": row["kind"], "length": row["length"], "question": row["question"],
            "answer": row["answer"]}


def load_split(run_dir: str | Path, split: str = "train", needed_by: int | None = None):
    """A built split as a `datasets.Dataset`; a one-line error naming the command when missing or corrupt."""
    if split not in SPLITS:
        raise SymphonyError(f"unknown dataset split '{split}'; choose {' or '.join(SPLITS)}")
    path = phase_dir(run_dir, PHASE) / split
    command = phase_command(run_dir, PHASE)
    if not manifest_path(run_dir, PHASE).is_file() or not path.is_dir():
        who = f"phase {PHASE}'s {split} split"
        if needed_by:
            who = f"phase {needed_by} needs {who}, which"
        raise SymphonyError(f"{who} is missing ({path}); run first: {command}")
    from datasets import Dataset, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged directory
        raise SymphonyError(f"phase {PHASE}'s {split} split at {path} is corrupt ({type(e).__name__});"
                            f" rebuild it: {phase_command(run_dir, PHASE, force=True)}") from None
    if not isinstance(ds, Dataset) or any(c not in ds.column_names for c in REQUIRED):
        raise SymphonyError(f"phase {PHASE}'s {split} split at {path} is not a phase 3 dataset;"
                            f" rebuild it: {phase_command(run_dir, PHASE, force=True)}")
    return ds


def summary_lines(result: dict) -> list[str]:
    """What `run-phase 3` prints under its status line."""
    return [json.dumps(result["counts"])] if result.get("counts") else []
