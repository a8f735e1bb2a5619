"""Private: one pass of :class:`mtlkit.MultiTaskLoader` over an epoch (iterators, positions)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mtlkit._distributed import stable_hash

from . import _distributed
from ._loader_inner import EXHAUSTED, inner_epoch, is_stateful, start

if TYPE_CHECKING:
    from .loader import MultiTaskLoader

VERSION = 1
"""Version of the ``state_dict`` layout."""


class Run:
    """One pass over an epoch: inner iterators and positions (shared with ``state_dict``)."""

    def __init__(self, owner: MultiTaskLoader, epoch: int, resume: Mapping[str, Any] | None):
        self.owner = owner
        self.epoch = epoch
        n = len(owner._names)
        self.its: list[Iterator | None] = [None] * n
        self.cycles = [0] * n
        self.consumed = [0] * n
        self.inner_states: list[Any] = [None] * n
        self.step = 0
        self.steps = owner._steps
        self.task = 0  # the current task of "sequential"
        spec = owner._spec
        self.schedule = None
        if spec.schedule is not None:
            self.schedule = spec.schedule(
                owner._sizes, owner._seed, owner._weights, owner._temperature or 1.0
            )
        if resume is None:
            if self.schedule is not None:
                self.schedule.begin(epoch, 0)
            return
        self.step = int(resume["step"])
        self.task = int(resume.get("task", 0))
        for i, name in enumerate(owner._names):
            pos = resume["loaders"][name]
            self.cycles[i], self.consumed[i] = int(pos["cycle"]), int(pos["consumed"])
            self.inner_states[i] = pos.get("state")
        if self.schedule is not None:
            self.schedule.begin(epoch, self.step if resume["schedule"] is None else 0)
            self.schedule.load(resume["schedule"])

    def fetch(self, i: int, cycle_on_exhaust: bool = True) -> Any:
        """The next batch of task ``i`` when its iterator is missing or ran out (slow path)."""
        owner = self.owner
        while True:
            if self.its[i] is not None:
                if not cycle_on_exhaust:
                    return EXHAUSTED
                self.cycles[i] += 1
                self.consumed[i] = 0
                self.inner_states[i] = None
            state, skip = self.inner_states[i], self.consumed[i]
            name, dl = owner._names[i], owner._loaders[i]
            if state is not None and not is_stateful(dl):
                raise ValueError(f"the saved state of task {name!r} needs a stateful loader")
            self.inner_states[i] = None
            it, batch = start(
                dl,
                rng_seed=stable_hash("mtlkit.inner", owner._seed, self.epoch, name, self.cycles[i]),
                epoch=inner_epoch(self.epoch, self.cycles[i]),
                skip=0 if state is not None else skip,
                state=state,
            )
            self.its[i] = it
            if batch is EXHAUSTED:
                if skip == 0 and state is None:
                    raise ValueError(f"loader {name!r} yielded no batches")
                continue
            self.consumed[i] = skip + 1
            return batch

    def state(self) -> dict[str, Any]:
        owner = self.owner
        loaders = {}
        for i, name in enumerate(owner._names):
            inner = self.inner_states[i]
            if self.its[i] is not None and is_stateful(owner._loaders[i]):
                inner = owner._loaders[i].state_dict()  # type: ignore[attr-defined]
            loaders[name] = {"cycle": self.cycles[i], "consumed": self.consumed[i], "state": inner}
        return {
            "version": VERSION,
            "mode": owner._mode,
            "tasks": list(owner._names),
            "seed": owner._seed,
            "steps": self.steps,
            "epoch": self.epoch,
            "step": self.step,
            "task": self.task,
            "schedule": None if self.schedule is None else self.schedule.state(),
            "loaders": loaders,
        }

    def check_ranks(self) -> None:
        """Raise ``ValueError`` on every rank when the ranks' configurations differ."""
        if _distributed.get_world_size() == 1:
            return
        import torch.distributed as dist

        owner = self.owner
        mine = (
            owner._mode,
            owner._names,
            owner._seed,
            owner._sizes,
            self.steps,
            self.epoch,
            self.step,
        )
        everyone: list[Any] = [None] * _distributed.get_world_size()
        dist.all_gather_object(everyone, mine)
        if any(other != mine for other in everyone):
            raise ValueError(
                "MultiTaskLoader differs across ranks (mode, tasks, seed, loader sizes, steps, "
                f"epoch, step): {everyone}; the ranks would train different task heads"
            )


def interleaved(run: Run) -> Iterator[dict[str, Any]]:
    names, its, consumed = run.owner._names, run.its, run.consumed
    pairs = list(enumerate(names))
    for step in range(run.step, run.steps):  # type: ignore[arg-type]
        out = {}
        for i, name in pairs:
            it = its[i]
            if it is not None:
                try:
                    out[name] = next(it)
                    consumed[i] += 1
                    continue
                except StopIteration:
                    pass
            out[name] = run.fetch(i)
        run.step = step + 1
        yield out


def sampled(run: Run) -> Iterator[tuple[str, Any]]:
    names, its, consumed = run.owner._names, run.its, run.consumed
    draw = run.schedule.draw  # type: ignore[union-attr]
    for step in range(run.step, run.steps):  # type: ignore[arg-type]
        i = draw()
        it = its[i]
        batch = EXHAUSTED
        if it is not None:
            try:
                batch = next(it)
                consumed[i] += 1
            except StopIteration:
                pass
        if batch is EXHAUSTED:
            batch = run.fetch(i)
        run.step = step + 1
        yield names[i], batch


def sequential(run: Run) -> Iterator[tuple[str, Any]]:
    names = run.owner._names
    while run.task < len(names):
        i = run.task
        name = names[i]
        batch = run.fetch(i, cycle_on_exhaust=False)
        while batch is not EXHAUSTED:
            run.step += 1
            yield name, batch
            try:
                batch = next(run.its[i])  # type: ignore[arg-type]
                run.consumed[i] += 1
            except StopIteration:
                batch = EXHAUSTED
        run.task += 1
