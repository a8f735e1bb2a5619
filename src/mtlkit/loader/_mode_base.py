"""Private: the base of the MultiTaskLoader mode registry (see :mod:`mtlkit.loader._modes`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from mtlkit.loader._inner import EXHAUSTED
from mtlkit.loader._run import EpochRun


class LoaderMode:
    """Base of the registry entries; a fresh instance holds one run's draw state."""

    name: ClassVar[str]
    yields_dict: ClassVar[bool] = False
    """A step is ``{task: batch}`` (else ``(task, batch)``)."""
    needs_sizes: ClassVar[bool] = False
    """Every loader needs ``len()``, whatever ``steps_per_epoch`` is."""
    cycles: ClassVar[bool] = True
    """Loaders restart when they run out, and ``steps_per_epoch`` applies."""

    def __init__(self, sizes: Sequence[int | None], seed: int, weights: Sequence[float] | None):
        self.sizes, self.seed, self.weights = list(sizes), seed, weights
        self.n_tasks = len(sizes)

    @staticmethod
    def default_steps(sizes: list[int]) -> int:
        """Steps in an epoch when ``steps_per_epoch`` is not given."""
        return sum(sizes)

    @staticmethod
    def draw_weights(
        sizes: list[int | None], temperature: float | None, weights: list[float] | None
    ) -> list[float] | None:
        """Unnormalised per-step task weights of a sampled mode (``None`` for the others)."""
        return None

    def begin(self, epoch: int, step: int, state: dict[str, Any] | None = None) -> None:
        """Place the draw at ``step`` of ``epoch``, or restore it from :meth:`state`."""

    def state(self) -> dict[str, Any] | None:
        return None

    def epoch_counts(self, epoch: int, steps: int) -> list[int]:
        """Batches drawn from each task in a full epoch (replays the draw)."""
        scratch = type(self)(self.sizes, self.seed, self.weights)
        scratch.begin(epoch, 0)
        counts = [0] * self.n_tasks
        for _ in range(steps):
            counts[scratch.draw()] += 1
        return counts

    def draw(self) -> int:
        raise NotImplementedError

    def iterate(self, run: EpochRun, finish: Callable[[], None]) -> Iterator[Any]:
        """``(task, batch)`` steps, one drawn task each, from ``run.step`` to the epoch's end."""
        names, steps, streams = run.names, run.steps, run.streams
        its, consumed, refill = streams.iterators, streams.consumed, streams.refill
        draw = self.draw
        last = steps - 1  # type: ignore[operator]
        for step in range(run.step, steps):  # type: ignore[arg-type]
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
                batch = refill(i)
            run.step = step + 1
            if step == last:
                finish()
            yield names[i], batch
