"""Private: the MultiTaskLoader modes that draw a random task at every step.

The draw is seeded by ``(seed, epoch)`` alone, so every DDP rank draws the same task; each
mode's task weights are computed once, by :meth:`draw_weights`, when the loader is built.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from mtlkit._distributed import stable_hash
from mtlkit.loader._mode_base import LoaderMode


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def _task_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(stable_hash("mtlkit.tasks", seed, epoch))


class Proportional(LoaderMode):
    """Draws without replacement from an urn of ``len(loader)`` balls per task.

    Each step takes task ``t`` with probability ``remaining_t / remaining``, so the marginal is
    ``n_t / sum(n)`` and a default-length epoch takes every batch of every loader exactly once.
    An empty urn is refilled.
    """

    name = "proportional"
    needs_sizes = True

    @staticmethod
    def draw_weights(
        sizes: list[int | None], temperature: float | None, weights: list[float] | None
    ) -> list[float]:
        return [float(s) for s in sizes]  # type: ignore[arg-type]

    def begin(self, epoch: int, step: int, state: dict[str, Any] | None = None) -> None:
        self._rng = _task_rng(self.seed, epoch)
        self._refill()
        if state is not None:
            _set_rng_state(self._rng, state["rng"])
            self._remaining = [int(r) for r in state["remaining"]]
            self._left = sum(self._remaining)
            return
        for _ in range(step):
            self.draw()

    def _refill(self) -> None:
        self._remaining = [int(s) for s in self.sizes]  # type: ignore[arg-type]
        self._left = sum(self._remaining)

    def draw(self) -> int:
        if self._left == 0:
            self._refill()
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


class _Independent(LoaderMode):
    """Each step draws a task independently (with replacement) by the mode's weights."""

    def __init__(self, sizes: Sequence[int | None], seed: int, weights: Sequence[float] | None):
        super().__init__(sizes, seed, weights)
        self._cum = list(_running_sum(weights))  # type: ignore[arg-type]
        self._total = self._cum[-1]
        self._last = max(i for i, w in enumerate(weights) if w > 0)  # type: ignore[arg-type]

    def begin(self, epoch: int, step: int, state: dict[str, Any] | None = None) -> None:
        self._rng = _task_rng(self.seed, epoch)
        if state is not None:
            _set_rng_state(self._rng, state["rng"])
            return
        for _ in range(step):
            self.draw()

    def draw(self) -> int:
        # bisect_right: the first task whose cumulative weight exceeds the draw, so a task of
        # weight 0 (an empty interval) is never drawn; the guard catches a product rounded up.
        i = bisect.bisect_right(self._cum, self._rng.random() * self._total)
        return i if i <= self._last else self._last

    def state(self) -> dict[str, Any]:
        return {"rng": _rng_state(self._rng)}


def _running_sum(values: Sequence[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


def _finite_sum(values: list[float]) -> bool:
    return math.isfinite(sum(values))


class Temperature(_Independent):
    """``p_t`` proportional to ``n_t ** (1 / temperature)``; ``sum(n)`` steps."""

    name = "temperature"
    needs_sizes = True

    @staticmethod
    def draw_weights(
        sizes: list[int | None], temperature: float | None, weights: list[float] | None
    ) -> list[float]:
        power = 1.0 / temperature  # type: ignore[operator]
        try:
            raw = [float(s) ** power for s in sizes]  # type: ignore[arg-type]
            if _finite_sum(raw):
                return raw
        except OverflowError:
            pass
        # A tiny temperature: n ** (1 / t) overflows, so rescale by the largest in log space.
        logs = [math.log(s) * power for s in sizes]  # type: ignore[arg-type]
        top = max(logs)
        return [math.exp(v - top) for v in logs]


class Weighted(_Independent):
    """``p_t`` proportional to ``weights[t]``; ``sum(n)`` steps."""

    name = "weighted"

    @staticmethod
    def draw_weights(
        sizes: list[int | None], temperature: float | None, weights: list[float] | None
    ) -> list[float]:
        raw = list(weights)  # type: ignore[arg-type]
        if _finite_sum(raw):
            return raw
        top = max(raw)  # huge weights: their sum overflows, their ratios do not
        return [w / top for w in raw]
