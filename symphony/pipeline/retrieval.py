"""Training data for the HEP-DNA retriever: what the archive's span summaries and a question's encoding are
computed from, read once from the frozen model, so the projection then trains on features alone.

    example = retrieval_example(engine, document_ids, fact_start, fact_end, question_ids)
    losses = train_retriever(engine.retriever, [example, ...], steps=200)

An example's candidates are every span of its document as the archive would summarise it (the frozen model's
hidden states at the retriever's layer, pooled over the span while it streamed through the bounded cache); its
target is the span holding most of the fact; the fact's other spans are neither target nor negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from symphony.errors import SymphonyError
from symphony.memory.retriever import UNCALIBRATED, SpanRetriever, fit


@dataclass
class RetrievalExample:
    question: torch.Tensor  # [d] the question's pooled hidden states
    spans: torch.Tensor  # [s, d] every span's pooled hidden states
    starts: torch.Tensor  # [s] their stream starts
    target: int  # the span holding most of the fact
    valid: torch.Tensor  # bool [s]: candidates (the fact's other spans are left out)


@torch.no_grad()
def span_features(engine, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream `ids` through a fresh stream of `engine` (whose model has a retriever) and return every span's
    (start [s], pooled hidden states [s, d]) as the archive summarises them: archived spans from what the cache
    handed the archive, the spans still in the window from the cache itself."""
    if engine.retriever is None:
        raise SymphonyError("the model has no HEP-DNA retriever (memory.retriever_dim = 0)")
    stream = engine.new_stream()
    if stream.recall is None:
        raise SymphonyError("the retriever's features come from the recall archive; cache.recall_bytes is 0")
    seen: dict[int, torch.Tensor] = {}  # stream position -> its hidden states (the latest the cache recorded)
    archive = stream.cache.on_archive

    def record(positions, token_ids, salience, features=None):
        if features is not None:
            for p, f in zip(positions.tolist(), features):
                seen[p] = f
        archive(positions, token_ids, salience, features)

    stream.cache.on_archive = record
    engine.ingest(stream, ids)
    cache = stream.cache
    if cache.features is not None:
        for p, f in zip(cache.positions.tolist(), cache.features):
            if p >= 0:
                seen.setdefault(p, f)
    span = stream.recall.span_len
    groups: dict[int, list[torch.Tensor]] = {}
    for p in sorted(seen):
        groups.setdefault(p // span * span, []).append(seen[p].float())
    starts = torch.tensor(sorted(groups), dtype=torch.int64)
    return starts, torch.stack([torch.stack(groups[s]).mean(0) for s in starts.tolist()])


def retrieval_example(engine, ids: torch.Tensor, fact_start: int, fact_end: int,
                      question: list[int] | torch.Tensor) -> RetrievalExample:
    """One training example: document `ids` with a fact at stream positions [fact_start, fact_end), asked
    about by `question` (token ids)."""
    starts, spans = span_features(engine, torch.as_tensor(ids))
    span = engine.cache_cfg.span_len
    overlap = ((torch.minimum(starts + span, torch.tensor(fact_end)) - torch.maximum(starts, torch.tensor(fact_start)))
               .clamp(min=0))
    if int(overlap.max()) == 0:
        raise SymphonyError(f"no span of the document holds positions {fact_start}..{fact_end}")
    target = int(torch.argmax(overlap))
    valid = overlap == 0
    valid[target] = True
    return RetrievalExample(engine.question_hidden(question), spans, starts, target, valid)


def stack(examples: list[RetrievalExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(questions [b, d], candidates [b, m, d], target [b], valid [b, m]), padded to the longest document."""
    m = max(len(e.spans) for e in examples)
    d = examples[0].spans.shape[1]
    cands = torch.zeros(len(examples), m, d)
    valid = torch.zeros(len(examples), m, dtype=torch.bool)
    for i, e in enumerate(examples):
        cands[i, :len(e.spans)] = e.spans
        valid[i, :len(e.spans)] = e.valid
    return (torch.stack([e.question for e in examples]), cands, torch.tensor([e.target for e in examples]), valid)


def train_retriever(retriever: SpanRetriever, examples: list[RetrievalExample], steps: int = 200,
                    lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Fit the retriever's projection on `examples` (contrastive); returns the loss per step."""
    if not examples:
        raise SymphonyError("no retrieval examples to train the retriever on")
    questions, cands, target, valid = stack(examples)
    return fit(retriever, questions, cands, target, valid, steps=steps, lr=lr, seed=seed)


@torch.no_grad()
def nearest(retriever: SpanRetriever, examples: list[RetrievalExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity [b], is it the target [b]) of each example's nearest valid candidate, by the retriever."""
    questions, cands, target, valid = stack(examples)
    sims = torch.einsum("bk,bmk->bm", retriever.encode(questions), retriever.encode(cands))
    best, where = sims.masked_fill(~valid.to(sims.device), float("-inf")).max(1)
    return best.cpu(), where.cpu() == target


def top1(retriever: SpanRetriever, examples: list[RetrievalExample]) -> float:
    """Share of examples whose nearest span (by the retriever, among the valid candidates) is the target."""
    return float(nearest(retriever, examples)[1].float().mean())


@torch.no_grad()
def calibrate(retriever: SpanRetriever, examples: list[RetrievalExample]) -> dict:
    """Set `min_similarity` from `examples` (the dev split): the threshold above which the nearest span is more
    often the fact than not, counted as right picks minus wrong ones (ties: the higher threshold)."""
    best, right = nearest(retriever, examples)
    gain, threshold = 0, UNCALIBRATED
    for t in sorted(best.tolist(), reverse=True):
        g = int((right & (best >= t)).sum()) - int((~right & (best >= t)).sum())
        if g > gain:
            gain, threshold = g, t
    retriever.min_similarity.fill_(threshold)
    above = best >= threshold
    return {"min_similarity": round(threshold, 4), "examples": len(examples), "top1": round(float(right.float().mean()), 4),
            "picked": int(above.sum()), "picked_right": int((above & right).sum())}


def examples_from(engine, samples, progress: bool = False, desc: str = "retriever features") -> list[RetrievalExample]:
    """Retrieval examples from phase 3 samples that plant an asked fact (`retrieval` = [fact start, fact end,
    document end]; the question is the sample's)."""
    from tqdm.auto import tqdm

    rows = [s for s in samples if len(s.get("retrieval") or []) == 3]
    out = []
    for s in tqdm(rows, desc=desc, unit="sample", disable=not progress):
        start, end, doc_end = s["retrieval"]
        ids = torch.tensor(s["input_ids"][:doc_end])
        out.append(retrieval_example(engine, ids, start, end, engine.encode(s["question"])))
    return out


def train_phase_retriever(engine, train, dev, steps: int, seed: int = 0, progress: bool = False) -> dict:
    """Phase 5's retriever step: features of the train split's facts, the projection trained on them, the threshold
    calibrated on the dev split's; what it reports in the phase's manifest."""
    retriever = engine.retriever
    tr = examples_from(engine, train, progress, "retriever features (train)")
    if not tr:
        return {"status": "skipped", "reason": "no phase 3 sample plants an asked fact (data.tasks)"}
    # calibrated where the retriever matters, on facts worded unlike their questions, if the dev split has them
    worded = [s for s in dev if s.get("kind") == "paraphrase"]
    dv = examples_from(engine, worded or dev, progress, "retriever features (dev)")
    before = {"train_top1": top1(retriever, tr), "dev_top1": top1(retriever, dv) if dv else None}
    losses = train_retriever(retriever, tr, steps=steps, seed=seed)
    report = {"steps": steps, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
              "before": before, "train_top1": round(top1(retriever, tr), 4)}
    report["calibration"] = calibrate(retriever, dv or tr)
    report["calibrated_on"] = ("dev, paraphrased facts" if worded else "dev") if dv else \
        "train (no dev sample plants a fact)"
    return report
