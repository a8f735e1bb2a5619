"""Private helpers of :mod:`mtlkit.loader`: starting, seeding and fast-forwarding inner loaders."""

from __future__ import annotations

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


def _skip(it: Iterator, loader: Iterable, count: int) -> bool:
    """Advance ``it`` by ``count`` batches; False when it ran out first.

    A single-process torch DataLoader over a map-style dataset is advanced at the sampler level
    (indices are drawn, no sample is loaded or collated); any other iterator is advanced by
    reading and discarding its batches.
    """
    if (
        isinstance(loader, DataLoader)
        and type(it).__name__ == "_SingleProcessDataLoaderIter"
        and not isinstance(loader.dataset, IterableDataset)
        and callable(getattr(it, "_next_index", None))
    ):
        for done in range(count):
            try:
                it._next_index()
            except StopIteration:
                it._num_yielded += done
                return False
        it._num_yielded += count
        return True
    for _ in range(count):
        try:
            next(it)
        except StopIteration:
            return False
    return True


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
    depend on ``rng_seed`` alone. ``state`` is loaded into a stateful
    loader first; otherwise ``skip`` batches are fast-forwarded. The first batch is
    :data:`EXHAUSTED` when nothing is left.
    """
    set_inner_epoch(loader, epoch)
    reseed_generators(loader, rng_seed)
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(rng_seed)
    try:
        if state is not None:
            loader.load_state_dict(state)  # type: ignore[attr-defined]
        it = iter(loader)
        if skip and not _skip(it, loader, skip):
            return it, EXHAUSTED
        try:
            first = next(it)
        except StopIteration:
            return it, EXHAUSTED
    finally:
        gen.set_state(saved)
    return it, first
