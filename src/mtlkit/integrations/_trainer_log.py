"""What MultiTaskTrainer adds to the Trainer's training logs between two logging steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor


class TrainLog:
    """Per-task losses (and SMART terms) plus gradient-surgery statistics, averaged per log.

    Losses stay on their device until :meth:`drain` (one host read per logging step, as the
    Trainer does for its own loss). ``tasks`` fixes the order in which cosine pairs are named.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        self._order = {t: i for i, t in enumerate(tasks)}
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._stats: dict[str, float] = {}
        self._stats_counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._counts or self._stats_counts)

    def add(self, prefix: str, values: Mapping[str, Tensor]) -> None:
        """Record ``{task: value}`` under ``{prefix}_{task}`` (a detached copy)."""
        for task, value in values.items():
            key = f"{prefix}_{task}"
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def add_surgery(self, tasks: Sequence[str], cosine: Tensor, num_conflicts: int) -> None:
        """Record one combination: its conflict count and the cosine of every task pair."""
        self._add_stat("num_conflicts", float(num_conflicts))
        order = sorted(range(len(tasks)), key=lambda i: self._order.get(tasks[i], i))
        values = cosine.tolist()
        for a_pos, a in enumerate(order):
            for b in order[a_pos + 1 :]:
                self._add_stat(f"cos_{tasks[a]}_{tasks[b]}", float(values[a][b]))

    def _add_stat(self, key: str, value: float) -> None:
        self._stats[key] = self._stats.get(key, 0.0) + value
        self._stats_counts[key] = self._stats_counts.get(key, 0) + 1

    def drain(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The means since the last drain, then reset.

        Args:
            reduce_sum: sums a tensor over processes (the losses are per rank; the surgery
                statistics are computed on the global gradients, identical on every rank).
        """
        out: dict[str, float] = {}
        keys = list(self._sums)  # first-seen order: the same on every rank
        if keys:
            sums = torch.stack([self._sums[k] for k in keys])
            counts = torch.tensor([float(self._counts[k]) for k in keys], device=sums.device)
            packed = torch.cat([sums, counts])
            if reduce_sum is not None:
                packed = reduce_sum(packed)
            means = (packed[: len(keys)] / packed[len(keys) :]).tolist()
            out.update(zip(keys, means, strict=True))
        for key in self._stats:
            out[key] = self._stats[key] / self._stats_counts[key]
        self._sums, self._counts, self._stats, self._stats_counts = {}, {}, {}, {}
        return out
