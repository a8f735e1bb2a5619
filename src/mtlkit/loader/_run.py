"""Private: one pass of a MultiTaskLoader over an epoch, and the configuration it runs under.

The loader hands a run everything it needs (a :class:`LoaderSpec`, the task streams, the mode's
draw state); a run never reads its loader, and holds no reference to it, so dropping the loader
frees the inner iterators (and their worker processes) at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from mtlkit import _distributed
from mtlkit.loader._state import VERSION
from mtlkit.loader._streams import TaskStreams


@dataclass(frozen=True)
class LoaderSpec:
    """A MultiTaskLoader's configuration, read-only."""

    mode: str
    names: tuple[str, ...]
    loaders: tuple[Iterable, ...]
    sizes: tuple[int | None, ...]
    seed: int
    steps: int | None
    """Steps per epoch (``None``: unknown, a sequential run over unsized loaders)."""
    carry_over: bool
    draw_weights: tuple[float, ...] | None
    """The sampled modes' unnormalised task weights, computed once."""
    mode_cls: Callable[..., DrawState]
    """The registry class of ``mode``."""

    def identity(self) -> dict[str, Any]:
        """What a ``state_dict`` must match to load into this loader."""
        return {
            "mode": self.mode,
            "tasks": list(self.names),
            "seed": self.seed,
            "steps": self.steps,
            "carry_over": self.carry_over,
        }

    def new_draw(self) -> DrawState:
        """A fresh instance of the mode: one run's draw state."""
        return self.mode_cls(self.sizes, self.seed, self.draw_weights)

    def new_streams(
        self, epoch: int, positions: list[tuple[int, int]] | None = None
    ) -> TaskStreams:
        return TaskStreams(
            self.names, self.loaders, seed=self.seed, epoch=epoch, carry_over=self.carry_over,
            positions=positions,
        )


class DrawState(Protocol):
    """What a run needs of its mode instance (one of :mod:`mtlkit.loader._modes`)."""

    def begin(self, epoch: int, step: int, state: dict[str, Any] | None = None) -> None: ...

    def state(self) -> dict[str, Any] | None: ...

    def iterate(self, run: EpochRun, finish: Callable[[], None]) -> Iterator[Any]:
        """The run's steps; ``finish()`` just before the epoch's last one is yielded."""
        ...


class EpochRun:
    """One pass over an epoch: the step reached, the mode's draw, and the task streams."""

    def __init__(
        self,
        spec: LoaderSpec,
        epoch: int,
        streams: TaskStreams,
        draw: DrawState,
        *,
        step: int = 0,
        task: int = 0,
        draw_state: dict[str, Any] | None = None,
    ) -> None:
        self.spec, self.epoch, self.streams, self.draw = spec, epoch, streams, draw
        self.names, self.steps = spec.names, spec.steps
        self.step = step
        self.task = task  # the current task of "sequential"
        self.finished = False
        draw.begin(epoch, step, draw_state)

    def state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            **self.spec.identity(),
            "epoch": self.epoch,
            "step": self.step,
            "task": self.task,
            "schedule": self.draw.state(),
            "loaders": self.streams.state(),
        }

    def check_ranks(self) -> None:
        """Raise ``ValueError`` on every rank when the ranks' configurations differ."""
        world = _distributed.get_world_size()
        if world == 1:
            return
        import torch.distributed as dist

        spec = self.spec
        mine = (
            spec.mode,
            spec.names,
            spec.seed,
            spec.sizes,
            spec.steps,
            spec.carry_over,
            self.epoch,
            self.step,
        )
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, mine)
        if any(other != mine for other in everyone):
            raise ValueError(
                "loaders: expected the same mode, tasks, seed, loader sizes, steps, carry_over, "
                f"epoch and step on every rank, got {everyone}: the MultiTaskLoader differs "
                "across ranks, which would train different task heads"
            )
