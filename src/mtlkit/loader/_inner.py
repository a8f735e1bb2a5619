"""Private: starting, seeding and fast-forwarding the inner loaders of a MultiTaskLoader."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

# Cycle ``c`` of outer epoch ``e`` gives the inner samplers the epoch ``e + c * _CYCLE_STRIDE``:
# cycle 0 is the outer epoch itself (what a user inspecting ``sampler.epoch`` expects) and later
# cycles never collide with another (epoch, cycle) pair below 2**32 epochs, so each restart of a
# DistributedSampler is a fresh shuffle.
_CYCLE_STRIDE = 1 << 32

EXHAUSTED = object()
"""Sentinel: the inner iterator had no batch left."""

_DATALOADER_ARGS = frozenset(inspect.signature(DataLoader.__init__).parameters)


def inner_epoch(epoch: int, cycle: int) -> int:
    """The epoch handed to an inner loader's samplers for its ``cycle``-th restart in ``epoch``."""
    return epoch + cycle * _CYCLE_STRIDE


def epoch_targets(loader: Iterable) -> list[Any]:
    """The objects of ``loader`` that have a ``set_epoch`` method, each once.

    Looks at the loader itself, its ``sampler``, its ``batch_sampler`` and that one's
    ``sampler``, and its ``dataset`` (an :class:`~torch.utils.data.IterableDataset` may shuffle
    by epoch).
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
        getattr(loader, "dataset", None),
    )
    seen: set[int] = set()
    out = []
    for obj in candidates:
        if obj is None or id(obj) in seen or not callable(getattr(obj, "set_epoch", None)):
            continue
        seen.add(id(obj))
        out.append(obj)
    return out


def set_inner_epoch(loader: Iterable, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on every epoch-aware part of ``loader``."""
    for obj in epoch_targets(loader):
        obj.set_epoch(epoch)


def reseed_generators(loader: Iterable, seed: int) -> None:
    """``manual_seed(seed)`` every ``torch.Generator`` that drives ``loader``'s shuffle.

    Covers the loader's ``generator`` and those of its ``sampler``, ``batch_sampler`` and that
    one's ``sampler`` (a ``RandomSampler(generator=g)``, a ``DataLoader(generator=g)``,
    torchdata's stateful ``RandomSampler``), so that each restart shuffles as a function of
    ``seed`` and not of how many times the generator was used before.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    owners = (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    )
    seen: set[int] = set()
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and id(gen) not in seen:
            seen.add(id(gen))
            gen.manual_seed(seed)


def is_stateful(loader: Iterable) -> bool:
    """Whether ``loader`` has ``state_dict``/``load_state_dict`` (a StatefulDataLoader)."""
    return callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    )


def is_one_shot(loader: Iterable) -> bool:
    """Whether ``loader`` is an iterator (``iter(loader) is loader``): it cannot restart."""
    return isinstance(loader, Iterator)


class _SkipFirst:
    """An index sampler whose first pass drops its first ``count`` items (later passes don't).

    Dropping indices before any reaches a worker is what makes a fast-forward free: nothing is
    loaded or collated, whatever the number of workers.
    """

    def __init__(self, sampler: Iterable, count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[Any]:
        # iter() of the sampler now and the skip at the first next(), as a DataLoader would call
        # them, so a sampler drawing random numbers in either draws them in the same order.
        return self._skip_then_yield(iter(self.sampler))

    def _skip_then_yield(self, it: Iterator[Any]) -> Iterator[Any]:
        count, self.count = self.count, 0
        for _ in range(count):
            if next(it, EXHAUSTED) is EXHAUSTED:
                return
        yield from it

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def sampler_skipping(loader: Iterable, count: int) -> DataLoader | None:
    """A one-pass twin of ``loader`` that starts ``count`` batches in, or ``None`` if impossible.

    Only for a plain :class:`~torch.utils.data.DataLoader` over a map-style dataset: the twin
    shares its dataset, sampler (or batch sampler), ``collate_fn``, generator and worker
    settings, and its index sampler skips ``count`` items first. The indices are drawn in the
    same order with the same random numbers, so the batches are those ``loader`` would yield.
    """
    if type(loader) is not DataLoader or isinstance(loader.dataset, IterableDataset):
        return None
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
    }
    for optional in ("pin_memory_device", "in_order"):  # torch-version dependent
        if optional in _DATALOADER_ARGS:
            kwargs[optional] = getattr(loader, optional)
    if loader.batch_sampler is not None:
        return DataLoader(
            loader.dataset, batch_sampler=_SkipFirst(loader.batch_sampler, count), **kwargs
        )
    return DataLoader(
        loader.dataset, batch_size=None, sampler=_SkipFirst(loader.sampler, count), **kwargs
    )


def _discard(it: Iterator, count: int) -> bool:
    """Read and drop ``count`` batches of ``it``; False when it ran out first."""
    return all(next(it, EXHAUSTED) is not EXHAUSTED for _ in range(count))


def start(
    loader: Iterable,
    *,
    rng_seed: int,
    epoch: int,
    skip: int = 0,
    state: dict | None = None,
) -> tuple[Iterator, Any]:
    """Create a fresh iterator over ``loader`` and return it with its first batch.

    The samplers get ``set_epoch(epoch)``, their own generators are seeded with ``rng_seed``, and
    the iterator is created (and its first batch drawn) with torch's CPU default generator
    temporarily seeded by ``rng_seed`` and restored afterwards, so samplers that draw their
    shuffle from the global RNG (the default ``RandomSampler``) and the workers' base seed
    depend on ``rng_seed`` alone. ``state`` is loaded into a stateful loader first; otherwise
    ``skip`` batches are fast-forwarded: at the sampler level where :func:`sampler_skipping`
    can, else by reading and discarding them. The first batch is :data:`EXHAUSTED` when nothing
    is left.
    """
    set_inner_epoch(loader, epoch)
    reseed_generators(loader, rng_seed)
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(rng_seed)
    try:
        source = loader
        if state is not None:
            loader.load_state_dict(state)  # type: ignore[attr-defined]
            skip = 0
        elif skip:
            source = sampler_skipping(loader, skip) or loader
        it = iter(source)
        if skip and source is loader and not _discard(it, skip):
            return it, EXHAUSTED
        first = next(it, EXHAUSTED)
    finally:
        gen.set_state(saved)
    return it, first
