"""The optimizer loop shared by phases 4-7: deterministic data order, gradient accumulation, `accelerate`
(mixed precision on GPU, data-parallel processes under `accelerate launch`), metrics to JSONL, atomic
checkpoints every K steps, exact resume after a kill, a loud stop on a non-finite loss.

Data parallelism: every process holds the frozen model and the adapters; step k's global samples are split
across processes and the adapters' gradients summed with one all-reduce, so N processes with batch B
compute exactly what one process computes with batch N·B (up to float summation order). The model is not
wrapped in DDP: the engine calls it with a cache object, and only the small adapter gradients need syncing.
"""
from __future__ import annotations

import copy
import json
import math
import random
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from symphony.errors import SymphonyError
from symphony.io import atomic_replace_dir, atomic_write_bytes, atomic_write_json, read_json
from symphony.memory.checkpoint import ADAPTERS_FILE
from symphony.memory.inject import adapter_state_dict
from symphony.pipeline.runs import phase_command
from symphony.pipeline.objective import stream_sample

STATE_DIR = "train_state"  # DIR/phaseN/train_state: the resume point, removed when the phase completes
METRICS_FILE = "metrics.jsonl"  # a completed phase's per-step metrics
# the metrics of a phase in training, beside its resume point; published as METRICS_FILE when the phase
# completes, so a redo leaves the previous run's metrics with its manifest until then
RUNNING_METRICS = "metrics.running.jsonl"


@dataclass
class LoopSpec:
    phase: int
    out_dir: Path  # DIR/phaseN
    params: list  # trainable parameters
    steps: int
    sampler: Callable[[int, int], list[int]]  # (step, samples per step) -> dataset row indices
    use_copy: bool
    use_router: bool
    fingerprint: str
    keeper: object | None = None  # extra resumable state: .state() -> (dict, tensors | None); .restore(dict, tensors)
    on_step_end: Callable[[int], None] | None = None  # after each optimizer step (stage ends, dev evaluation)


def epoch_sampler(pool: list[int], seed: int) -> Callable[[int, int], list[int]]:
    """Step k takes the next samples of a fresh seeded permutation of `pool` per epoch: a pure function of
    (seed, step), so a resumed run sees exactly the samples an uninterrupted one would."""
    if not pool:
        raise SymphonyError("no training samples for this phase; check data.tasks / data.lengths and rerun phase 3")
    perms: dict[int, list[int]] = {}

    def perm(epoch: int) -> list[int]:
        if epoch not in perms:
            order = list(pool)
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            perms[epoch] = order
        return perms[epoch]

    def sample(step: int, per_step: int) -> list[int]:
        return [perm(j // len(pool))[j % len(pool)] for j in range(step * per_step, (step + 1) * per_step)]

    return sample


def make_optimizer(params: list, cfg) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw8bit":
        if not torch.cuda.is_available():
            raise SymphonyError("train.optimizer=adamw8bit needs CUDA (bitsandbytes); use train.optimizer=adamw")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def make_accelerator(cfg, device: torch.device):
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision if device.type == "cuda" else "no"
    return Accelerator(cpu=device.type != "cuda", mixed_precision=mp)


# ---- resumable state ---------------------------------------------------------------------------------

def save_train_state(model, optimizer, out_dir: Path, step: int, fingerprint: str, extra: dict | None,
                     best: dict | None = None) -> None:
    """DIR/phaseN/train_state/ (adapters, optimizer, step), built aside and moved into place at once."""
    from safetensors.torch import save

    final = out_dir / STATE_DIR
    tmp = out_dir / f".{STATE_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: t.detach().cpu().contiguous() for k, t in adapter_state_dict(model).items()}
    atomic_write_bytes(tmp / ADAPTERS_FILE, save(tensors))
    if best is not None:
        atomic_write_bytes(tmp / "best.safetensors", save({k: t.cpu().contiguous() for k, t in best.items()}))
    torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", {"step": step, "fingerprint": fingerprint, "extra": extra or {}})
    atomic_replace_dir(tmp, final)


def _unusable(d: Path, why: str) -> SymphonyError:
    return SymphonyError(f"the resume point {d} {why}; delete it to start the phase over: rm -r {shlex.quote(str(d))}")


def load_train_state(model, optimizer, out_dir: Path, fingerprint: str) -> tuple[int, dict, dict | None]:
    """Resume point: (step, extra, best tensors) or (0, {}, None) when there is none for this fingerprint."""
    from safetensors.torch import load_file

    d = out_dir / STATE_DIR
    if not (d / "state.json").is_file():
        return 0, {}, None
    try:
        state = read_json(d / "state.json")
        if state.get("fingerprint") != fingerprint:
            shutil.rmtree(d)  # made with other settings: start over rather than mix
            return 0, {}, None
        tensors = load_file(str(d / ADAPTERS_FILE))
        # a run directory is user input: weights_only unpickles tensors and plain containers only, so a
        # crafted optimizer.pt is refused instead of running its code
        opt = torch.load(d / "optimizer.pt", weights_only=True)
        if not (isinstance(opt, dict) and isinstance(opt.get("optimizer"), dict)
                and isinstance(opt.get("rng"), torch.Tensor)):
            raise ValueError("unexpected contents")
        step = int(state["step"])
        best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").is_file() else None
    except Exception as e:  # noqa: BLE001 - any damage means the resume point is unusable
        raise _unusable(d, f"is corrupt or unsafe ({type(e).__name__})") from None
    own = adapter_state_dict(model)
    if set(tensors) != set(own):
        raise _unusable(d, "does not match this model's adapters")
    try:
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(tensors[k].to(t.dtype))
        optimizer.load_state_dict(opt["optimizer"])
        torch.set_rng_state(opt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise _unusable(d, f"is corrupt ({type(e).__name__})") from None
    return step, state.get("extra") or {}, best


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metric lines of steps before `step` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:  # records are numbered from 1: step k = k steps done
                keep.append(line)
        except json.JSONDecodeError:
            break
    atomic_write_bytes(path, ("\n".join(keep) + ("\n" if keep else "")).encode())


# ---- the loop ----------------------------------------------------------------------------------------

def train_loop(cfg, engine, dataset, spec: LoopSpec, progress: bool = True,
               on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run `spec.steps` optimizer steps (resuming from DIR/phaseN/train_state if present). Returns a summary."""
    model, t = engine.model, cfg.train
    acc = make_accelerator(cfg, engine.device)
    world, rank = acc.num_processes, acc.process_index
    optimizer = make_optimizer(spec.params, cfg)
    start, extra, best = load_train_state(model, optimizer, spec.out_dir, spec.fingerprint)
    if spec.keeper is not None and start:
        spec.keeper.restore(extra, best)
    metrics_path = spec.out_dir / RUNNING_METRICS
    if acc.is_main_process:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(metrics_path, start)
    per_step = t.batch_size * t.grad_accum * world
    engine.grad_enabled = True
    bar = tqdm(total=spec.steps, initial=start, desc=f"phase {spec.phase}", unit="step",
               disable=not progress or not acc.is_main_process, dynamic_ncols=True)
    last_good = str(spec.out_dir / STATE_DIR) if start else "none (no checkpoint yet)"
    summary = {"start_step": start, "steps": spec.steps}
    try:
        for step in range(start, spec.steps):
            t0 = time.perf_counter()
            rows = spec.sampler(step, per_step)[rank::world]
            optimizer.zero_grad(set_to_none=True)
            nll = router = 0.0
            targets = tokens = 0
            for i in rows:
                row = dataset[int(i)]
                with acc.autocast():
                    st = stream_sample(engine, torch.tensor(row["input_ids"]), torch.tensor(row["loss_mask"]),
                                       torch.tensor(row["keep_mask"]), spec.use_copy, spec.use_router,
                                       t.tbptt_segments, scale=1.0 / per_step)
                nll += st.nll / max(1, st.targets)
                router += st.router / max(1, st.tokens)
                targets += st.targets
                tokens += st.tokens
            stats = torch.tensor([nll, router, float(targets), float(tokens)], dtype=torch.float64)
            if world > 1:
                import torch.distributed as dist

                for p in spec.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                dist.all_reduce(stats)
            nll, router = float(stats[0]) / per_step, float(stats[1]) / per_step
            loss = nll + (router if spec.use_router else 0.0)
            if not math.isfinite(loss) or any(p.grad is not None and not torch.isfinite(p.grad).all()
                                               for p in spec.params):
                lower = copy.deepcopy(cfg)
                lower.train.lr = float(f"{t.lr / 2:.3g}")
                # another rate is another fingerprint: the rerun starts the phase over rather than resuming
                raise SymphonyError(f"phase {spec.phase}: loss is {loss} at step {step + 1}; last good checkpoint: "
                                    f"{last_good}. Lower train.lr (now {t.lr}) and run the phase again: "
                                    f"{phase_command(spec.out_dir.parent, spec.phase, lower)}")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(spec.params, t.max_grad_norm)) \
                if t.max_grad_norm > 0 else float("nan")
            optimizer.step()
            for module in model.modules():  # parameters with a constrained range (e.g. the copy gate scale)
                if hasattr(module, "project_"):
                    module.project_()
            dt = time.perf_counter() - t0
            record = {"step": step + 1, "loss": round(loss, 6), "nll": round(nll, 6),
                      "router_bce": round(router, 6) if spec.use_router else None,
                      "grad_norm": round(grad_norm, 6), "tokens": int(stats[3]), "tok_s": round(float(stats[3]) / dt, 1),
                      "lr": t.lr}
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tok_s']:.0f}")
            bar.update(1)
            summary["last"] = record
            if spec.on_step_end is not None:
                spec.on_step_end(step + 1)
            if (step + 1) % t.checkpoint_every == 0 and step + 1 < spec.steps:
                if acc.is_main_process:
                    extra, best = spec.keeper.state() if spec.keeper is not None else (None, None)
                    save_train_state(model, optimizer, spec.out_dir, step + 1, spec.fingerprint, extra, best)
                acc.wait_for_everyone()
                last_good = str(spec.out_dir / STATE_DIR)
            if on_step is not None:
                on_step(step + 1, record)
    finally:
        engine.grad_enabled = False
        bar.close()
    return summary


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def has_train_state(out_dir: Path, fingerprint: str) -> bool:
    """Whether a resume point made with `fingerprint` is waiting in `out_dir`."""
    try:
        return read_json(out_dir / STATE_DIR / "state.json").get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def clear_train_state(out_dir: Path) -> None:
    shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    (out_dir / RUNNING_METRICS).unlink(missing_ok=True)
