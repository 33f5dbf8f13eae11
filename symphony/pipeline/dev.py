"""Dev-split evaluation used by the training phases: answer NLL and exact answers by greedy decoding."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from symphony.haystack import contains_answer
from symphony.pipeline.objective import stream_sample


@torch.no_grad()
def evaluate_dev(engine, dev, use_copy: bool, max_samples: int = 0, progress: bool = False) -> dict:
    """Mean NLL per target token over the dev split (LM documents and task answers alike) and, for the
    tasks, the fraction whose greedy answer contains the expected value (exact, as `eval needle` scores)."""
    n = len(dev) if max_samples <= 0 else min(max_samples, len(dev))
    nll_sum, targets, by_kind = 0.0, 0, {}
    was = engine.grad_enabled
    engine.grad_enabled = False
    try:
        for i in tqdm(range(n), desc="dev", disable=not progress, leave=False):
            row = dev[i]
            ids = torch.tensor(row["input_ids"])
            st = stream_sample(engine, ids, torch.tensor(row["loss_mask"]), torch.tensor(row["keep_mask"]),
                               use_copy, False, backward=False)
            nll_sum += st.nll
            targets += st.targets
            k = by_kind.setdefault(row["kind"], {"n": 0, "correct": 0, "nll": 0.0, "targets": 0})
            k["n"] += 1
            k["nll"] += st.nll
            k["targets"] += st.targets
            if row["kind"] != "lm":
                stream = engine.new_stream()
                engine.ingest(stream, ids[: row["answer_start"]])
                budget = len(engine.tokenizer(row["answer"], add_special_tokens=False).input_ids) + 8
                text = engine.tokenizer.decode(engine.decode(stream, budget), skip_special_tokens=True)
                k["correct"] += int(contains_answer(text, row["answer"]))
    finally:
        engine.grad_enabled = was
    tasks = [v for kind, v in by_kind.items() if kind != "lm"]
    answered = sum(v["n"] for v in tasks)
    return {
        "nll": nll_sum / max(1, targets),
        "accuracy": (sum(v["correct"] for v in tasks) / answered) if answered else None,
        "by_kind": {kind: {"n": v["n"], "nll": v["nll"] / max(1, v["targets"]),
                           "accuracy": None if kind == "lm" else v["correct"] / v["n"]} for kind, v in by_kind.items()},
        "samples": n,
    }


def dev_score(metrics: dict) -> tuple:
    """Higher is better: answer accuracy first, then lower NLL."""
    return (metrics["accuracy"] if metrics["accuracy"] is not None else 0.0, -metrics["nll"])
