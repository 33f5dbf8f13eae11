"""What phases 4-7 train, on which samples, from which checkpoint (the loop itself is `training.loop`).

    4 coarse     memory adapters (FHRR/Titans + gates)    LM loss on the long documents
    5 hep-dna    salience router + copy head               keep-exactly labels + answer tokens of the tasks
    6 calibrate  gates, decay/forget, copy gate            curriculum over train.curriculum lengths; the best
                                                           stage on the dev split is kept
    7 finetune   every adapter and pointer parameter,      all samples; exports DIR/final
                 and the persistent-memory task tokens

Each phase is one `TrainingSpec` in its `phases.PHASES` row (what it trains, on which samples, whether the
copy head and router learn, a curriculum, the export), read by the one `run_training_phase` below. A phase
starts from the adapters of the phase its spec names (phase 4 from phase 2's), takes the memory config
phase 2 recorded, and writes DIR/phaseN/{adapters.safetensors, manifest.json, metrics.jsonl, loss.png}. A phase
is built aside and replaces the previous DIR/phaseN (and DIR/final, for the phase that exports it) only once
complete: a failed or interrupted redo (--force) leaves the previous result in place.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from symphony.config import SymphonyConfig, parse_int_list, recorded_memory_config
from symphony.errors import SymphonyError
from symphony.memory.checkpoint import ADAPTERS_FILE, load_checkpoint, save_adapters, save_retriever
from symphony.memory.inject import adapter_state_dict, memory_adapters, pointer_heads, retriever_of
from symphony.memory.kinds import calibrated_parameter_names
from symphony.memory.persistent import PERSISTENT_ATTR, persistent_memory
from symphony.pipeline.phases import PHASES, TrainingSpec, phase_title, training_spec
from symphony.pipeline.runs import (
    PhaseRun, fingerprint, make_manifest, manifest_path, phase_command, phase_dir, read_manifest, staged_dir,
    symphony_command,
)
from symphony.pipeline.dev import dev_score, evaluate_dev
from symphony.pipeline.retrieval import train_phase_retriever
from symphony.pipeline.loop import (
    METRICS_FILE, RUNNING_METRICS, LoopSpec, clear_train_state, epoch_sampler, has_train_state, is_main_process,
    train_loop, wait_for_everyone,
)


def effective_config(cfg: SymphonyConfig, run_dir: Path) -> SymphonyConfig:
    """The run's config: the model and memory phase 2 built (its model is phase 1's), with this call's
    cache/salience/data/train settings."""
    phase2 = read_manifest(run_dir, 2)  # the caller has checked the prerequisites
    out = copy.deepcopy(cfg)
    made = phase2.get("config") or {}
    if (made.get("model") or {}).get("name") not in (None, cfg.model.name):
        raise SymphonyError(f"{run_dir} was built for model '{made['model']['name']}', not '{cfg.model.name}'; use the"
                            " same -c/--set options as phase 1, or another --run-dir")
    out.memory = recorded_memory_config(made.get("memory") or {}, base=cfg.memory)
    return out


def _previous_adapters(run_dir: Path, phase: int, cfg: SymphonyConfig) -> Path:
    prev = training_spec(phase).starts_from
    read_manifest(run_dir, prev, needed_by=phase, config=cfg)
    d = phase_dir(run_dir, prev)
    if not (d / ADAPTERS_FILE).is_file():
        raise SymphonyError(f"phase {phase} needs {d / ADAPTERS_FILE}, which is missing; redo: "
                            f"{phase_command(run_dir, prev, cfg, force=True)}")
    return d


def adapters_sha256(manifest: dict) -> str | None:
    """The sha256 of the adapters a phase manifest describes."""
    return (manifest.get("adapters") or {}).get("sha256")


def _trainable(model, phase: int, copy_head: bool = True) -> list[torch.nn.Parameter]:
    """Select this phase's parameters; every other adapter parameter is frozen for the phase. Parameters a
    memory holds fixed by config (e.g. FHRR phases with learn_phases off) stay fixed, and so does the copy
    head when `memory.copy_head` is off (the router still trains)."""
    adapters = [(n, p) for n, p in model.named_parameters() if ".memory_adapter." in n]
    heads = pointer_heads(model)
    pointer = [(f"symphony_pointer.{n}", p) for n, p in heads.named_parameters()
               if copy_head or not n.startswith("copy_head.")] if heads is not None else []
    pm = persistent_memory(model)  # persistent task tokens: only a phase that trains "everything"
    persistent = [(f"{PERSISTENT_ATTR}.{n}", p) for n, p in pm.named_parameters()] if pm is not None else []
    everything = adapters + pointer + persistent
    learnable = {n for n, p in everything if p.requires_grad}  # as inject made them, on a fresh model
    calibrated = calibrated_parameter_names(model)  # gates and decay, as each memory module declares them
    chosen = {"adapters": adapters, "pointer": pointer,
              "calibrated": [(n, p) for n, p in adapters + pointer if n in calibrated],
              "everything": everything}[training_spec(phase).trains]
    names = {n for n, _ in chosen if n in learnable}
    params = []
    for n, p in everything:
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    return params


def _pool(dataset, samples: str, max_len: int | None = None) -> list[int]:
    """The rows a phase trains on: `samples` ("lm", "tasks" or "all") of at most `max_len` tokens."""
    kinds, lengths = dataset["kind"], dataset["length"]
    keep = []
    for i, (kind, n) in enumerate(zip(kinds, lengths)):
        if samples == "lm" and kind != "lm":
            continue
        if samples == "tasks" and kind == "lm":
            continue
        if max_len is not None and n > max_len:
            continue
        keep.append(i)
    return keep


class BestKeeper:
    """A curriculum: dev evaluation at each stage end; keeps the best adapters seen (resumable)."""

    def __init__(self, engine, dev, use_copy: bool, stage_steps: int, stages: list[int], progress: bool):
        self.engine, self.dev, self.use_copy = engine, dev, use_copy
        self.stage_steps, self.stages, self.progress = stage_steps, stages, progress
        self.best: dict | None = None
        self.history: list[dict] = []

    def start(self, metrics: dict) -> None:
        """Record the starting weights as the first candidate (stage -1): no stage that is worse on the dev
        split replaces them."""
        self.history = [{"stage": -1, "length": None, "step": 0, **metrics}]
        self.best = {k: t.detach().clone().cpu() for k, t in adapter_state_dict(self.engine.model).items()}

    def state(self):
        return {"history": self.history}, self.best

    def restore(self, extra: dict, best):
        self.history = list(extra.get("history", []))
        self.best = dict(best) if best is not None else None

    def on_step_end(self, step: int) -> None:
        if step % self.stage_steps:
            return
        stage = step // self.stage_steps - 1
        metrics = evaluate_dev(self.engine, self.dev, self.use_copy, progress=self.progress)
        record = {"stage": stage, "length": self.stages[stage], "step": step, **metrics}
        better = not self.history or dev_score(metrics) > max(dev_score(h) for h in self.history)
        self.history.append(record)
        if better:
            self.best = {k: t.detach().clone().cpu() for k, t in adapter_state_dict(self.engine.model).items()}

    def load_best(self) -> None:
        if self.best is None:
            return
        with torch.no_grad():
            for k, t in adapter_state_dict(self.engine.model).items():
                t.copy_(self.best[k].to(t.dtype))


def phase_fingerprint(cfg: SymphonyConfig, run_dir: Path, phase: int) -> str:
    prev = training_spec(phase).starts_from
    d = cfg.to_dict()
    return fingerprint({"phase": phase, "prev": read_manifest(run_dir, prev).get("fingerprint"),
                        "data": read_manifest(run_dir, 3).get("fingerprint"), "train": _trained_train(d["train"], phase),
                        "cache": _trained_cache(d["cache"]), "salience": d["salience"], "seed": cfg.seed})


def _trained_train(train: dict, phase: int) -> dict:
    """The train settings a phase's fingerprint hashes: the retriever's steps only where they are used (phase 5)."""
    return train if training_spec(phase).retriever else {k: v for k, v in train.items() if k != "retriever_steps"}


def _trained_cache(cache: dict) -> dict:
    """The cache settings as a phase's fingerprint has always hashed them. Training asks no questions, so the
    recall archive's size, place and search (`recall_bytes`, `recall_path`, `recall_hops`, `recall_copy`, added
    later) are left out, and an unset `recall_tokens` reads as the 32,768 it was before it could be unset: runs
    trained before stay up to date."""
    out = {k: v for k, v in cache.items() if k not in ("recall_bytes", "recall_path", "recall_hops", "recall_copy")}
    if out.get("recall_tokens", -1) < 0:
        out["recall_tokens"] = 32768
    return out


RETRIEVER_FILE = "retriever.safetensors"  # phase 5's trained retriever alone (memory.retriever=FILE loads it)


def run_training_phase(cfg: SymphonyConfig, run_dir: str | Path, phase: int, force: bool = False,
                       progress: bool = True, on_step=None) -> dict:
    from symphony.pipeline.dataset import load_split
    from symphony.runtime.engine import StreamingEngine
    from symphony.models import freeze, load_model

    spec = training_spec(phase)
    run_dir = Path(run_dir).expanduser()
    read_manifest(run_dir, phase - 1, needed_by=phase, config=cfg)  # the immediate prerequisite is named first
    read_manifest(run_dir, 3, needed_by=phase, config=cfg)
    prev_dir = _previous_adapters(run_dir, phase, cfg)
    cfg = effective_config(cfg, run_dir)
    fp = phase_fingerprint(cfg, run_dir, phase)
    # the weights it starts from: a redone earlier phase (even with the same settings) makes this one stale
    start = read_manifest(run_dir, spec.starts_from)
    from_sha = adapters_sha256(start)
    state_fp = fingerprint({"phase": fp, "from": from_sha})
    run = PhaseRun(run_dir, phase, fp, "other settings (or from other earlier phases)", cfg, files=(ADAPTERS_FILE,),
                   recorded={"from_sha256": from_sha})
    # a redo with these settings that was interrupted resumes from its resume point
    if (done := run.up_to_date(force, resumable=lambda: has_train_state(run.dir, state_fp))) is not None:
        return done
    if force:
        clear_train_state(run.dir)

    train, dev = load_split(run_dir, "train"), load_split(run_dir, "dev")
    loaded = load_model(cfg.model, seed=cfg.seed)
    model = loaded.model
    freeze(model)
    load_checkpoint(model, prev_dir, model_name=cfg.model.name)
    engine = StreamingEngine(model, loaded.tokenizer, cfg.cache, cfg.salience, policy="symphony")
    params = _trainable(model, phase, cfg.memory.copy_head)
    heads = pointer_heads(model)
    has_pointer = heads is not None
    if has_pointer and not cfg.memory.copy_head:  # built without the copy head: its gate stays shut
        with torch.no_grad():
            heads.copy_head.gate_scale.zero_()
    use_copy = has_pointer and cfg.memory.copy_head and spec.copy
    use_router = has_pointer and spec.router
    body: dict = {"name": phase_title(phase), "fingerprint": fp, "config": cfg.to_dict(), "from": str(prev_dir),
                  "from_sha256": from_sha, "trainable_parameters": sum(p.numel() for p in params)}

    retriever = retriever_of(model) if spec.retriever else None
    if retriever is not None:  # trained on features read once from the frozen model, apart from the loop below
        body["retriever"] = train_phase_retriever(engine, train, dev, cfg.train.retriever_steps, cfg.seed + phase,
                                                  progress)
    if not params and retriever is None:
        body.update(status="skipped", reason=f"nothing to train in phase {phase}: {spec.idle}")
        if is_main_process():
            _publish(model, run, spec, body)
        wait_for_everyone()
        return run.result("skipped")

    if not params:  # the retriever alone
        if is_main_process():
            _publish(model, run, spec, body)
        wait_for_everyone()
        return run.result()
    if start.get("dev_after") and start.get("use_copy") == use_copy:
        body["dev_before"] = start["dev_after"]  # the same weights on the same dev split
    else:
        body["dev_before"] = evaluate_dev(engine, dev, use_copy, progress=progress)
    body["use_copy"] = use_copy
    steps, sampler, keeper = _schedule(spec, phase, cfg, train, engine, dev, use_copy, body["dev_before"], progress)
    loop_spec = LoopSpec(phase, run.dir, params, steps, sampler, use_copy, use_router, state_fp, keeper=keeper,
                         on_step_end=keeper.on_step_end if keeper else None)
    summary = train_loop(cfg, engine, train, loop_spec, progress=progress, on_step=on_step)
    if keeper is not None:
        keeper.load_best()
        body["stages"] = keeper.history
    body["dev_after"] = evaluate_dev(engine, dev, use_copy, progress=progress)
    body["training"] = summary
    body["gates"] = {f"layer{a.layer_idx}": round(a.gate.item(), 6) for a in memory_adapters(model)}
    if has_pointer:
        body["copy_gate_scale"] = round(heads.copy_head.gate_scale.item(), 6)
    if is_main_process():  # data-parallel runs: one process writes
        _publish(model, run, spec, body, trained=True)
    wait_for_everyone()
    return run.result()


def _schedule(spec: TrainingSpec, phase: int, cfg: SymphonyConfig, train, engine, dev, use_copy: bool,
              dev_before: dict, progress: bool):
    """(steps, sampler, keeper): `train.phase<N>_steps` steps over the spec's samples (capped by
    train.max_steps) or, with a curriculum, that many per stage of train.curriculum lengths, each stage
    ending with a dev evaluation that keeps the best weights (`keeper`; None without a curriculum)."""
    t = cfg.train
    steps = getattr(t, f"phase{phase}_steps")
    if t.max_steps > 0:
        steps = min(steps, t.max_steps)
    if not spec.curriculum:
        return steps, epoch_sampler(_pool(train, spec.samples), cfg.seed + phase), None
    stages = parse_int_list(t.curriculum, "train.curriculum")
    pools = [_pool(train, spec.samples, n) for n in stages]
    for n, pool in zip(stages, pools):
        if not pool:
            raise SymphonyError(f"phase {phase}: no training sample of at most {n} tokens for the curriculum stage; "
                                f"set train.curriculum to lengths within data.lengths ({cfg.data.lengths})")
    samplers = [epoch_sampler(pool, cfg.seed + phase + s) for s, pool in enumerate(pools)]
    sampler = lambda step, k: samplers[step // steps](step % steps, k)  # noqa: E731
    keeper = BestKeeper(engine, dev, use_copy, steps, stages, progress)
    keeper.start(dev_before)  # the weights the phase starts from are a candidate too
    return steps * len(stages), sampler, keeper


def _publish(model, run: PhaseRun, spec: TrainingSpec, body: dict, trained: bool = False) -> None:
    """Write DIR/phaseN (adapters, manifest; metrics and loss curve when `trained`) aside and swap it in,
    which also drops the resume point; a trained phase whose spec exports DIR/final then writes it the same way."""
    from symphony.pipeline.plots import plot_losses

    with run.stage() as stage:
        if trained and (run.dir / RUNNING_METRICS).is_file():
            shutil.copyfile(run.dir / RUNNING_METRICS, stage / METRICS_FILE)
            plot_losses(stage / METRICS_FILE, stage / "loss.png", f"phase {run.number} ({phase_title(run.number)})")
        save_adapters(model, stage, make_manifest(run.number, body))
        if "retriever" in body and body["retriever"].get("status") != "skipped":  # also on its own, to ship
            save_retriever(model, stage / RETRIEVER_FILE, body["config"]["model"]["name"],
                           trained_by=f"symphony run-phase {run.number} (phase 5 of {run.run_dir})")
    if trained and spec.exports_final:
        with staged_dir(Path(run.run_dir) / "final") as stage:
            save_adapters(model, stage, make_manifest(run.number, {**body, "name": "final"}))


def check_pipeline_trains(cfg: SymphonyConfig, run_dir: str | Path, first: int, last: int) -> None:
    """Refuse, before any work, a pipeline through phases 4-7 that would train nothing: no memory adapters,
    no pointer heads, no persistent tokens (each phase would only report itself skipped, and no final/ is
    exported). From phase 3 on the memory is the one phase 2 recorded."""
    if last < 4:
        return
    run_dir = Path(run_dir).expanduser()
    memory, where = cfg.to_dict()["memory"], ""
    if first > 2 and manifest_path(run_dir, 2).is_file():
        recorded = (read_manifest(run_dir, 2, config=cfg).get("config") or {}).get("memory")
        if isinstance(recorded, dict):
            memory, where = recorded, f" in {phase_dir(run_dir, 2)}"
    if (memory.get("kind", "none") != "none" or memory.get("pointer") or memory.get("persistent_tokens", 0) > 0
            or memory.get("retriever_dim", 0) > 0):
        return
    suggested = copy.deepcopy(cfg)
    suggested.memory.kind, suggested.memory.pointer = "titans", True
    start = min(first, 2)  # the memory is built by phase 2
    args = ["pipeline", *(["--from", str(start)] if start != 1 else []),
            *(["--to", str(last)] if last != max(PHASES) else [])]
    command = symphony_command(args, run_dir, suggested, force=manifest_path(run_dir, 2).is_file())
    preset = " (or use -c smollm2-135m-cpu)" if cfg.model.name == "smollm2-135m" and cfg.preset != "smollm2-135m-cpu" \
        else ""
    raise SymphonyError(f"memory.kind is none{where}, so phases 4-7 would train nothing and export no final/; train "
                        f"a memory: {command}{preset}, or stop before phase 4 with --to 3")


def summary_lines(result: dict) -> list[str]:
    """What `run-phase 4-7` prints under its status line: the dev split before and after, or why it was skipped."""
    if result.get("dev_after"):
        before, after = result["dev_before"], result["dev_after"]
        acc = lambda m: "-" if m.get("accuracy") is None else f"{m['accuracy']:.0%}"  # noqa: E731
        return [f"dev: nll {before['nll']:.4f} -> {after['nll']:.4f}, answers {acc(before)} -> {acc(after)}"
                f" ({after['samples']} samples); {result['trainable_parameters']:,} parameters trained"]
    return [result["reason"]] if result.get("reason") else []
