"""Evals that outgrow one process: `accelerate launch -m symphony.cli.main eval needle|ppl ...` (or torchrun)
splits a suite's cells across processes (GPUs, nodes) and merges them into the one results file.

Every process takes every world-th cell of the suite's deterministic cell list and writes its rows to its own
shard file beside the results file (`needle.shard-1.json`, through ResultStore: atomic, resumable). After a
barrier, rank 0 merges the rows the results file had, the shards' rows, in the order one process would have
written them, into the results file, deletes the shards and draws the plots; the other ranks print nothing.
A run without a launcher is one process writing the results file directly, exactly as before sharding
existed. Rows travel through files, not collectives, so across nodes --out must be on a shared filesystem.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from symphony.errors import SymphonyError
from symphony.evaluation.results import ResultStore

# A sharded run waits at the final barrier for its slowest process; a cell of a long needle grid can take
# hours, so the default (30 minutes) would kill correct runs. A process that dies is not waited for:
# torchrun ends the others when one fails.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


# -- who am I ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this node

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise SymphonyError(f"environment variable {name}={text!r} is not a whole number; unset it, or start"
                            " the processes with accelerate launch") from None


def current_world() -> World:
    """From torch.distributed when it is initialised, else from the launcher's RANK / WORLD_SIZE / LOCAL_RANK /
    LOCAL_WORLD_SIZE (accelerate launch and torchrun set them), else rank 0 of 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
    else:
        rank, size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    local_rank = _env_int("LOCAL_RANK", rank % max(local_size, 1))
    if not (size >= 1 and 0 <= rank < size and 1 <= local_size and 0 <= local_rank < local_size):
        raise SymphonyError(f"inconsistent launcher environment (RANK={rank}, WORLD_SIZE={size}, "
                            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size}); start the processes with "
                            "accelerate launch or torchrun")
    return World(rank, size, local_rank, local_size)


def join_world() -> World:
    """current_world(), with torch.distributed's default group initialised when there are several processes.
    Gloo even on GPUs: the only collective is a barrier, and NCCL would reserve GPU memory in every process
    that the suites' memory budgets would then count as held."""
    world = current_world()
    if world.sharded:
        import torch.distributed as dist

        if not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
            if missing:
                raise SymphonyError(f"WORLD_SIZE={world.size} but {' and '.join(missing)} not set; start the "
                                    "processes with accelerate launch or torchrun")
            dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=BARRIER_TIMEOUT)
    return world


def barrier(world: World) -> None:
    if world.sharded:
        import torch.distributed as dist

        dist.barrier()


def single_process_only(suite: str, why: str) -> None:
    """Refuse a suite that must not be split; every process would otherwise run all of it into one file."""
    world = current_world()
    if world.sharded:
        raise SymphonyError(f"eval {suite} {why}, so it runs in one process; start it without accelerate launch"
                            f" (this is process {world.rank} of {world.size})")


def quiet_unless_main(world: World, echo: Callable[[str], None]) -> Callable[[str], None]:
    """Rank 0 speaks for a sharded run; the others would print the same lines again."""
    return echo if world.main else (lambda *_args, **_kw: None)


# -- where my process runs ---------------------------------------------------------------------------
def process_config(cfg, world: World):
    """cfg, with the model on this process's own GPU (cuda:LOCAL_RANK, shared round-robin when there are more
    processes than GPUs) when a sharded run asks for cuda / auto on a machine that has them. A copy: the
    caller's config is not changed."""
    import torch

    if not world.sharded or cfg.model.device not in ("cuda", "auto") or not torch.cuda.is_available():
        return cfg
    index = world.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)  # so code that says plain "cuda" lands here too
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=f"cuda:{index}"))


def processes_on_device(device, world: World) -> int:
    """How many processes of this node share `device`'s memory: all of them on CPU (one RAM), those mapped to
    the same GPU on CUDA. The default memory limit is split between them."""
    import torch

    if device.type == "cuda":
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return sum(1 for r in range(world.local_size) if r % count == index) or 1
    return world.local_size if device.type == "cpu" else 1


# -- cells and rows ----------------------------------------------------------------------------------
def split_cells(cells: Sequence, world: World) -> list:
    """This process's cells: every world-th one starting at its rank. Neighbouring cells (same length, other
    method or depth) cost about the same, so each process gets an even share of cheap and costly ones."""
    return list(cells[world.rank::world.size])


def merge_rows(before: list[dict], others: Iterable[dict], key: Callable[[dict], tuple],
               order: Sequence[tuple]) -> list[dict]:
    """The rows one process would have written: `before` (the results file's rows when the run started) as
    they are, then every other row of a cell not seen yet, in `order` (the suite's cell list; cells not in it
    last, as they came). A cell in several inputs (a merge interrupted before the shards were deleted) is
    kept once, its first row."""
    index = {cell: i for i, cell in enumerate(order)}
    seen = {key(r) for r in before}
    new = []
    for row in others:
        k = key(row)
        if k not in seen:
            seen.add(k)
            new.append(row)
    new.sort(key=lambda r: index.get(key(r), len(index)))  # stable: unknown cells keep their order
    return [*before, *new]


def shard_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}.shard-{rank}{path.suffix}")


def shard_paths(path: Path) -> list[Path]:
    """Every shard of `path` on disk, by rank (a run with more processes than this one may have left some)."""
    pattern = re.compile(rf"{re.escape(path.stem)}\.shard-(\d+){re.escape(path.suffix)}")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.shard-*{path.suffix}")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


# -- the store a suite writes through ----------------------------------------------------------------
class ShardedResults:
    """One suite run's results. One process writes the results file itself (ResultStore, unchanged); in a
    sharded run each process writes its shard and rank 0 merges at `finish`.

    cells: the suite's whole cell list, as tuples of `key_fields` values, in the order one process runs them.
    deal: the same cells in the order they are dealt to the processes (default: `cells`).
    checked: objects of the file that must be dicts when it is resumed (ResultStore's `sections`).
    sections: dicts keyed by the cell's first key field (ppl's per_position, by method) kept beside the rows:
    read back on resume, unioned over the shards (in row order), written with every save.
    derive(rows): objects recomputed from the rows at each save of the results file (needle's summary);
    shards leave them out, the merge recomputes them."""

    def __init__(self, path: Path, key_fields: Sequence[str], cells: Sequence[tuple], resume: bool = False,
                 deal: Sequence[tuple] | None = None, checked: Sequence[str] = (), sections: Sequence[str] = (),
                 derive: Callable[[list[dict]], dict] | None = None, world: World | None = None):
        self.path = Path(path)
        self.world = world or current_world()
        self.cells = list(cells)
        self._sections = tuple(sections)
        self._derive = derive
        checked = tuple(dict.fromkeys([*checked, *sections]))
        leftovers = shard_paths(self.path)
        if leftovers and not resume:
            raise SymphonyError(f"{leftovers[0]} exists (rows of an interrupted multi-process run); pass --resume "
                                "to continue it, or choose another --out")
        # every process reads the results file and every shard: a cell done by any earlier run (with any
        # number of processes) is not done again
        self._final = ResultStore(self.path, key_fields, meta={}, resume=resume, sections=checked)
        self._before = list(self._final.rows)
        read = [ResultStore(p, key_fields, meta={}, resume=True, sections=checked) for p in leftovers]
        self.previous: dict[str, Any] = self._final.previous or (read[0].previous if read else {})
        self.meta: dict[str, Any] = {}
        self.section_data: dict[str, dict] = {}
        for name in self._sections:
            merged: dict = {}
            for store in [self._final, *read]:
                merged.update(store.previous.get(name) or {})
            self.section_data[name] = merged
        self._done = {store.key(r) for store in [self._final, *read] for r in store.rows}
        mine = self.path if not self.world.sharded else shard_path(self.path, self.world.rank)
        self._writer = self._final if mine == self.path else ResultStore(mine, key_fields, meta={}, resume=True,
                                                                          sections=checked)
        self._writer.meta = self.meta  # the suite fills in meta after opening; every save writes the latest
        self.mine = split_cells(self.cells if deal is None else deal, self.world)  # the cells this process runs
        self._mine = set(self.mine)
        # no process writes a shard before every process has checked for leftovers (or one would find a
        # shard of this very run and refuse)
        barrier(self.world)

    def key(self, row: dict[str, Any]) -> tuple:
        return self._final.key(row)

    def owns(self, **cell: Any) -> bool:
        """Whether this process runs the cell (every cell on one process)."""
        return self.key(cell) in self._mine

    def has(self, **cell: Any) -> bool:
        """Whether an earlier run, or this process, finished the cell."""
        return self.key(cell) in self._done or self._writer.has(**cell)

    def section(self, name: str) -> dict:
        return self.section_data[name]

    def _extra(self, rows: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.section_data)
        if self._derive is not None and self._writer is self._final:
            out.update(self._derive(rows))
        return out

    def add(self, row: dict[str, Any]) -> None:
        self._writer.add(row, extra=self._extra)

    @property
    def rows(self) -> list[dict]:
        """The results file's rows (after `finish`, on rank 0); this process's shard before that."""
        return self._writer.rows

    def finish(self) -> bool:
        """Save; in a sharded run wait for every process, then rank 0 merges the shards into the results file
        and removes them. True where this process reports the run (rank 0)."""
        self._writer.save(extra=self._extra)  # a process with no cells still leaves its (empty) shard
        barrier(self.world)
        if not self.world.main:
            return False
        shards = shard_paths(self.path)
        if not shards:
            return True  # one process, no earlier shards: the results file is complete as written
        lost = [r for r in range(self.world.size) if self.world.sharded and shard_path(self.path, r) not in shards]
        if lost:
            raise SymphonyError(f"the rows of process(es) {', '.join(map(str, lost))} are not in {self.path.parent};"
                                " across machines --out must be a folder they all share")
        read = [ResultStore(p, self._final.key_fields, meta={}, resume=True) for p in shards]
        others = [*self._final.rows[len(self._before):], *(r for store in read for r in store.rows)]
        self._final.meta = self.meta
        self._final.set_rows(merge_rows(self._before, others, self.key, self.cells))
        first_row: dict = {}
        for i, row in enumerate(self._final.rows):
            first_row.setdefault(self.key(row)[0], i)
        for name in self._sections:
            merged = self.section_data[name]  # in place: the suite holds it
            for store in read:
                merged.update(store.previous.get(name) or {})
            ordered = sorted(merged.items(), key=lambda kv: first_row.get(kv[0], len(first_row)))
            merged.clear()
            merged.update(ordered)
        self._writer = self._final
        self._final.save(extra=self._extra)
        for p in shards:  # only once their rows are safely in the results file
            p.unlink(missing_ok=True)
        return True
