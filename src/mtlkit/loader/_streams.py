"""Private: the per-task inner iterators of a MultiTaskLoader and where each task stands.

A task's position is its pass (``cycle``) and the batches consumed in it. Without
``carry_over`` the passes are counted within an epoch (each epoch restarts every task at cycle 0,
the samplers' epoch ``epoch + cycle * 2**32``); with it they are counted since epoch 0 (pass
``p`` gives the samplers epoch ``p``) and an unfinished pass goes on into the next epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mtlkit._distributed import stable_hash
from mtlkit.loader._inner import EXHAUSTED, inner_epoch, is_one_shot, is_stateful, start


class TaskStreams:
    """Inner iterators and positions of every task.

    ``iterators``, ``cycles`` and ``consumed`` are lists indexed by task. The modes' loops read
    and advance ``iterators[i]`` and ``consumed[i]`` directly (the hot path) and call
    :meth:`refill` when an iterator is missing or ran out.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        loaders: tuple[Iterable, ...],
        *,
        seed: int,
        epoch: int,
        carry_over: bool,
        positions: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        n = len(names)
        self.names, self.loaders, self.seed, self.epoch = names, loaders, seed, epoch
        self.carry_over = carry_over
        self.iterators: list[Iterator | None] = [None] * n
        self.cycles = [0] * n
        self.consumed = [0] * n
        self.inner_states: list[Any] = [None] * n
        if positions is not None:
            for i, (cycle, consumed) in enumerate(positions):
                self.cycles[i], self.consumed[i] = cycle, consumed

    def restore(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        """Positions (and inner loaders' own states) from a ``state_dict()["loaders"]``."""
        for i, name in enumerate(self.names):
            pos = saved[name]
            self.cycles[i], self.consumed[i] = int(pos["cycle"]), int(pos["consumed"])
            self.inner_states[i] = pos.get("state")

    def state(self) -> dict[str, dict[str, Any]]:
        out = {}
        for i, name in enumerate(self.names):
            inner = self.inner_states[i]
            if self.iterators[i] is not None and is_stateful(self.loaders[i]):
                inner = self.loaders[i].state_dict()  # type: ignore[attr-defined]
            out[name] = {"cycle": self.cycles[i], "consumed": self.consumed[i], "state": inner}
        return out

    def _seed_and_epoch(self, i: int) -> tuple[int, int]:
        """The RNG seed and sampler epoch of task ``i``'s current pass."""
        name, cycle = self.names[i], self.cycles[i]
        if self.carry_over:
            return stable_hash("mtlkit.pass", self.seed, name, cycle), cycle
        seed = stable_hash("mtlkit.inner", self.seed, self.epoch, name, cycle)
        return seed, inner_epoch(self.epoch, cycle)

    def refill(self, i: int, restart: bool = True) -> Any:
        """The next batch of task ``i`` when its iterator is missing or ran out (slow path).

        A missing iterator is started at the recorded position; one that ran out starts the
        next pass (or, with ``restart=False``, :data:`EXHAUSTED` is returned).
        """
        while True:
            if self.iterators[i] is not None:
                if not restart:
                    return EXHAUSTED
                self.cycles[i] += 1
                self.consumed[i] = 0
                self.inner_states[i] = None
            state, skip = self.inner_states[i], self.consumed[i]
            name, loader = self.names[i], self.loaders[i]
            if state is not None and not is_stateful(loader):
                raise ValueError(
                    f"state_dict['loaders'][{name!r}]['state']: expected None for a loader "
                    f"without load_state_dict ({type(loader).__name__}), got a saved state"
                )
            self.inner_states[i] = None
            rng_seed, epoch = self._seed_and_epoch(i)
            it, batch = start(
                loader, rng_seed=rng_seed, epoch=epoch, skip=0 if state is not None else skip,
                state=state,
            )
            self.iterators[i] = it
            if batch is not EXHAUSTED:
                self.consumed[i] = skip + 1
                return batch
            if skip == 0 and state is None:
                raise ValueError(_no_batches(name, loader))

    def next_epoch(self, sizes: Sequence[int | None]) -> None:
        """Carry the positions into the next epoch; a pass that is complete starts anew.

        A task that consumed its whole pass goes to ``(cycle + 1, 0)`` and its iterator is
        dropped (freeing its workers), so the positions equal those replayed from the lengths.
        """
        self.epoch += 1
        for i, size in enumerate(sizes):
            if size is not None and self.consumed[i] >= size:
                self.cycles[i] += 1
                self.consumed[i] = 0
                self.iterators[i] = None
                self.inner_states[i] = None


def replayed_positions(
    mode: Any, sizes: Sequence[int | None], steps: int | None, epoch: int
) -> list[tuple[int, int]]:
    """carry_over: ``(pass, consumed)`` of every task at the start of ``epoch``, from the
    lengths and the draws of the epochs before (``mode.epoch_counts``); no data is read."""
    totals = [0] * len(sizes)
    for e in range(epoch):
        for i, count in enumerate(mode.epoch_counts(e, steps)):
            totals[i] += count
    return [divmod(total, int(n)) for total, n in zip(totals, sizes, strict=True)]  # type: ignore[arg-type]


def _no_batches(name: str, loader: Iterable) -> str:
    if is_one_shot(loader):
        return (
            f"loaders[{name!r}]: expected an iterable that can be restarted (each epoch, and in "
            f"a cycling mode whenever it runs out), got a one-shot {type(loader).__name__} that "
            "is used up; pass a list, a DataLoader, or an object whose __iter__ returns a new "
            "iterator"
        )
    return (
        f"loaders[{name!r}]: expected at least one batch per pass, got none (loader {name!r} "
        "yielded no batches)"
    )
