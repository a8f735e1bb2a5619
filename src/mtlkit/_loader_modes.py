"""Private registry of :class:`mtlkit.MultiTaskLoader` modes: which task each step draws.

A schedule's task sequence is a function of ``(seed, epoch)`` alone, never of the data, the rank
or the wall clock, so every DDP rank draws the same task at the same step.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any

from mtlkit._distributed import stable_hash


class _Schedule:
    """Base schedule: ``begin(epoch)`` then ``draw()`` once per step."""

    def __init__(
        self,
        sizes: list[int | None],
        seed: int,
        weights: list[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.n_tasks = len(sizes)
        self.sizes = sizes
        self.seed = seed
        self.weights = weights
        self.temperature = temperature

    def begin(self, epoch: int, step: int) -> None:
        raise NotImplementedError

    def draw(self) -> int:
        raise NotImplementedError

    def state(self) -> dict[str, Any] | None:
        return None

    def load(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state` returned (after :meth:`begin` for the same epoch/step)."""


class _RoundRobin(_Schedule):
    def begin(self, epoch: int, step: int) -> None:
        self._next = step % self.n_tasks

    def draw(self) -> int:
        i = self._next
        self._next = (i + 1) % self.n_tasks
        return i


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class _Urn(_Schedule):
    """``proportional``: draw without replacement from an urn of ``len(loader)`` balls per task.

    Each step takes task ``t`` with probability ``remaining_t / remaining``, so the marginal
    probability is ``n_t / sum(n)`` as in proportional sampling, and a default-length epoch takes
    every batch of every loader exactly once. An empty urn is refilled (all loaders restart).
    """

    def begin(self, epoch: int, step: int) -> None:
        self._rng = random.Random(stable_hash("mtlkit.tasks", self.seed, epoch))
        self._remaining = [int(s) for s in self.sizes]  # type: ignore[arg-type]
        self._left = sum(self._remaining)
        for _ in range(step):
            self.draw()

    def draw(self) -> int:
        if self._left == 0:
            self._remaining = [int(s) for s in self.sizes]  # type: ignore[arg-type]
            self._left = sum(self._remaining)
        r = self._rng.randrange(self._left)
        remaining = self._remaining
        i = 0
        while r >= remaining[i]:
            r -= remaining[i]
            i += 1
        remaining[i] -= 1
        self._left -= 1
        return i

    def state(self) -> dict[str, Any]:
        return {"rng": _rng_state(self._rng), "remaining": list(self._remaining)}

    def load(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        _set_rng_state(self._rng, state["rng"])
        self._remaining = [int(r) for r in state["remaining"]]
        self._left = sum(self._remaining)


class _Independent(_Schedule):
    """``temperature`` / ``weighted``: each step draws a task independently (with replacement)."""

    def probabilities(self) -> list[float]:
        raise NotImplementedError

    def begin(self, epoch: int, step: int) -> None:
        probs = self.probabilities()
        self._cum = _cumsum(probs)
        self._total = self._cum[-1]
        self._last = max(i for i, p in enumerate(probs) if p > 0)
        self._rng = random.Random(stable_hash("mtlkit.tasks", self.seed, epoch))
        for _ in range(step):
            self.draw()

    def draw(self) -> int:
        # bisect_right: the first task whose cumulative weight exceeds the draw, so a task of
        # weight 0 (an empty interval) is never drawn; the guard catches a product rounded up.
        i = bisect.bisect_right(self._cum, self._rng.random() * self._total)
        return i if i <= self._last else self._last

    def state(self) -> dict[str, Any]:
        return {"rng": _rng_state(self._rng)}

    def load(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            _set_rng_state(self._rng, state["rng"])


def _cumsum(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


class _Temperature(_Independent):
    def probabilities(self) -> list[float]:
        return [float(s) ** (1.0 / self.temperature) for s in self.sizes]  # type: ignore[arg-type]


class _Weighted(_Independent):
    def probabilities(self) -> list[float]:
        return list(self.weights)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModeSpec:
    """One registry entry.

    Attributes:
        yields_dict: ``True`` when a step is a ``{task: batch}`` dict, else ``(task, batch)``.
        sizes_needed: every loader must have ``len()`` whatever ``steps_per_epoch`` is.
        cycles: smaller loaders restart when they run out (``False``: each runs once).
        schedule: the task schedule, ``None`` when every step holds every task.
    """

    yields_dict: bool
    sizes_needed: bool
    cycles: bool
    schedule: type[_Schedule] | None

    def default_steps(self, sizes: list[int | None]) -> int | None:
        """Steps in an epoch when ``steps_per_epoch`` is not given (``None``: unknown)."""
        if any(s is None for s in sizes):
            return None
        known = [int(s) for s in sizes]  # type: ignore[arg-type]
        if self.yields_dict:
            return max(known)
        if self.schedule is _RoundRobin:
            return len(known) * max(known)
        return sum(known)


MODES: dict[str, ModeSpec] = {
    "interleaved": ModeSpec(yields_dict=True, sizes_needed=False, cycles=True, schedule=None),
    "round_robin": ModeSpec(False, sizes_needed=False, cycles=True, schedule=_RoundRobin),
    "proportional": ModeSpec(False, sizes_needed=True, cycles=True, schedule=_Urn),
    "temperature": ModeSpec(False, sizes_needed=True, cycles=True, schedule=_Temperature),
    "weighted": ModeSpec(False, sizes_needed=False, cycles=True, schedule=_Weighted),
    "sequential": ModeSpec(False, sizes_needed=False, cycles=False, schedule=None),
}


def probabilities(
    mode: str, sizes: list[int | None], temperature: float, weights: list[float] | None
) -> list[float] | None:
    """The per-step task probabilities of a sampled mode (``None`` for the others)."""
    if mode == "proportional":
        raw = [float(s) for s in sizes]  # type: ignore[arg-type]
    elif mode == "temperature":
        raw = [float(s) ** (1.0 / temperature) for s in sizes]  # type: ignore[arg-type]
    elif mode == "weighted":
        raw = list(weights)  # type: ignore[arg-type]
    else:
        return None
    total = math.fsum(raw)
    return [r / total for r in raw]
