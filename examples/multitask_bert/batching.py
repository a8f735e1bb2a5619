"""Length-aware batching (little padding) and resumable endless per-task streams."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .data import TokenizedTask


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length, so dynamic padding wastes little compute.

    Training (``shuffle=True``): the indices are shuffled with ``seed + epoch``, cut into
    groups of ``batch_size * group_batches``, each group is sorted by length and cut into
    batches, and the batches are shuffled. Evaluation (``shuffle=False``): all indices sorted
    by length, longest first. ``start`` skips the first batches (used by ``--resume``).

    ``swap_pairs`` (training only, over a dataset with both orders of each pair): each index
    ``i`` is replaced by ``i + len(lengths)`` (the swapped pair) with probability 1/2, drawn
    from the same seeded generator, so a resumed run sees the same orders.

    >>> s = LengthGroupedBatchSampler([5, 1, 3, 2], batch_size=2, shuffle=False)
    >>> list(s)
    [[0, 2], [3, 1]]
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 group_batches: int = 50, swap_pairs: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if swap_pairs and not shuffle:
            raise ValueError("swap_pairs is for training batches (shuffle=True)")
        self.swap_pairs = swap_pairs
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.seed, self.group_batches, self.epoch, self.start = seed, group_batches, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -self.lengths[i])
            return [order[i:i + bs] for i in range(0, n, bs)]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(n, generator=g).tolist()
        group = bs * self.group_batches
        out: list[list[int]] = []
        for s in range(0, n, group):
            chunk = sorted(perm[s:s + group], key=lambda i: self.lengths[i])
            out.extend(chunk[i:i + bs] for i in range(0, len(chunk), bs))
        order = torch.randperm(len(out), generator=g).tolist()
        batches = [out[i] for i in order]
        if self.swap_pairs:  # drawn after the order, which stays that of swap_pairs=False
            flips = torch.randint(0, 2, (n,), generator=g).tolist()
            batches = [[i + n * flips[i] for i in b] for b in batches]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start:]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size) - self.start


def make_loader(ds: TokenizedTask, batch_size: int, shuffle: bool, seed: int = 0,
                collate: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None,
                swap_pairs: bool = False) -> DataLoader:
    """A DataLoader over ``ds`` with length-grouped batches and dynamic padding.

    ``collate`` replaces ``ds.collate`` (under torchrun: a
    :class:`~multitask_bert.distributed.ShardCollate` that keeps this rank's rows).
    ``swap_pairs`` shows each pair in a random order (only where ``ds`` has both orders).
    """
    sampler = LengthGroupedBatchSampler(ds.lengths, batch_size, shuffle, seed,
                                        swap_pairs=swap_pairs and ds.has_both_orders)
    # an own generator: iterating never draws from the global RNG (exact --resume)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate or ds.collate,
                      generator=torch.Generator().manual_seed(seed))


class TaskStream:
    """An endless, resumable stream of training batches of one task.

    Each pass over the data reshuffles (``seed + pass``); ``state_dict`` is (pass, batches
    consumed), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.sampler: LengthGroupedBatchSampler = loader.batch_sampler  # type: ignore[assignment]
        self.passes, self.pos = 0, 0
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def batches_per_pass(self) -> int:
        return math.ceil(len(self.sampler.lengths) / self.sampler.batch_size)

    def next(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self.sampler.set_epoch(self.passes, self.pos)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.passes, self.pos = self.passes + 1, 0
            self.sampler.set_epoch(self.passes, 0)
            self._it = iter(self.loader)
            batch = next(self._it)
        self.pos += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes, self.pos, self._it = int(state["passes"]), int(state["pos"]), None
