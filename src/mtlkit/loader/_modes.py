"""Private: the registry of :class:`~mtlkit.loader.MultiTaskLoader` modes, one class per mode.

A mode class knows its epoch length, which task each step draws, the state of that draw, and the
loop that turns draws into steps. The draw is a function of ``(seed, epoch)`` alone, never of the
data, the rank or the clock, so every DDP rank draws the same task at the same step. The loops
are the hot path: they advance the run's inner iterators inline and call ``streams.refill`` only
when an iterator is missing or ran out; ``finish`` is called just before the epoch's last step
is yielded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

from mtlkit.loader._inner import EXHAUSTED
from mtlkit.loader._mode_base import LoaderMode
from mtlkit.loader._run import EpochRun
from mtlkit.loader._sampled_modes import Proportional, Temperature, Weighted

Mode = Literal[
    "interleaved", "round_robin", "proportional", "temperature", "weighted", "sequential"
]


class Interleaved(LoaderMode):
    """The paper's mode: every step holds one batch of every task; ``max(n)`` steps."""

    name = "interleaved"
    yields_dict = True

    @staticmethod
    def default_steps(sizes: list[int]) -> int:
        return max(sizes)

    def epoch_counts(self, epoch: int, steps: int) -> list[int]:
        return [steps] * self.n_tasks

    def iterate(self, run: EpochRun, finish: Callable[[], None]) -> Iterator[dict[str, Any]]:
        steps, streams = run.steps, run.streams
        its, consumed, refill = streams.iterators, streams.consumed, streams.refill
        pairs = list(enumerate(run.names))
        last = steps - 1  # type: ignore[operator]
        for step in range(run.step, steps):  # type: ignore[arg-type]
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
                out[name] = refill(i)
            run.step = step + 1
            if step == last:
                finish()
            yield out


class RoundRobin(LoaderMode):
    """The tasks in a fixed cyclic order; ``T * max(n)`` steps."""

    name = "round_robin"

    @staticmethod
    def default_steps(sizes: list[int]) -> int:
        return len(sizes) * max(sizes)

    def begin(self, epoch: int, step: int, state: dict[str, Any] | None = None) -> None:
        self._next = step % self.n_tasks

    def draw(self) -> int:
        i = self._next
        self._next = (i + 1) % self.n_tasks
        return i

    def epoch_counts(self, epoch: int, steps: int) -> list[int]:
        full, rest = divmod(steps, self.n_tasks)
        return [full + (i < rest) for i in range(self.n_tasks)]


class Sequential(LoaderMode):
    """Every batch of the first task, then the next (the paper's baseline); ``sum(n)`` steps."""

    name = "sequential"
    cycles = False

    def epoch_counts(self, epoch: int, steps: int) -> list[int]:
        return [int(s) for s in self.sizes]  # type: ignore[arg-type]

    def iterate(self, run: EpochRun, finish: Callable[[], None]) -> Iterator[tuple[str, Any]]:
        names, steps, streams = run.names, run.steps, run.streams
        while run.task < len(names):
            i = run.task
            batch = streams.refill(i, restart=False)
            it = streams.iterators[i]
            while batch is not EXHAUSTED:
                run.step += 1
                if run.step == steps:
                    finish()
                yield names[i], batch
                try:
                    batch = next(it)  # type: ignore[arg-type]
                    streams.consumed[i] += 1
                except StopIteration:
                    batch = EXHAUSTED
            run.task += 1


MODES: dict[str, type[LoaderMode]] = {
    cls.name: cls
    for cls in (Interleaved, RoundRobin, Proportional, Temperature, Weighted, Sequential)
}
"""The registry, in the order of :data:`Mode`."""


def probabilities(draw_weights: list[float] | None) -> list[float] | None:
    """Normalised per-step task probabilities (``None`` when the mode draws no task)."""
    if draw_weights is None:
        return None
    total = math.fsum(draw_weights)
    return [w / total for w in draw_weights]
