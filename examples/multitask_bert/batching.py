"""Training batches: length-grouped per-task DataLoaders, drawn by ``mtlkit.MultiTaskLoader``.

Each task gets one DataLoader whose batches hold sentences of similar length, so dynamic
padding wastes little compute: transformers' ``LengthGroupedSampler`` shuffles the rows, cuts
them into mega-batches of 50 batches, and sorts each by length (the longest batch first), so
the batch lengths run in a saw-tooth through the epoch; ``--batch-order shuffled``
(:class:`ShuffledBatches`) keeps the same batches and draws their order at random, as the
pipeline did before it used the library's loader. With ``--pair-swap`` a
:class:`PairSwapSampler` shows each pair in a random order. Every
schedule of the pipeline (interleaved, sequential, the sampled modes) is then
:class:`mtlkit.MultiTaskLoader` over those loaders (:func:`multitask_loader`): it seeds each
loader's generator from ``(seed, epoch, task, pass)``, so a pass's order is a function of the
seed alone, ``carry_over=True`` lets a smaller task finish its pass in the next epoch instead
of restarting it, and its ``state_dict`` resumes mid-epoch exactly.

Under torchrun every rank draws the same global batches and keeps its shard of the rows
(:class:`~multitask_bert.distributed.ShardCollate`), so ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler

import mtlkit

from .config import BATCH_ORDERS
from .data import TokenizedTask
from .distributed import DistEnv, ShardCollate


class PairSwapSampler(Sampler[int]):
    """Row ``i`` of ``inner`` becomes ``i + rows`` (the swapped pair) with probability 1/2.

    The flips are drawn from ``generator`` after ``inner``'s order (which is that of the
    unswapped sampler), so a pass's orders are a function of the generator's seed.

    >>> g = torch.Generator().manual_seed(0)
    >>> order = list(PairSwapSampler(range(4), rows=4, generator=g))
    >>> sorted(i % 4 for i in order), all(0 <= i < 8 for i in order)
    ([0, 1, 2, 3], True)
    """

    def __init__(self, inner: Any, rows: int, generator: torch.Generator) -> None:
        self.inner, self.rows, self.generator = inner, rows, generator

    def __iter__(self) -> Iterator[int]:
        order = list(self.inner)
        flips = torch.randint(0, 2, (len(order),), generator=self.generator).tolist()
        return iter([i + self.rows * f for i, f in zip(order, flips, strict=True)])

    def __len__(self) -> int:
        return len(self.inner)


class ShuffledBatches(Sampler[list[int]]):
    """The batches of ``BatchSampler(sampler, batch_size)``, in an order drawn from ``generator``.

    Over a ``LengthGroupedSampler`` the batches keep their similar lengths (the padding saving)
    but lose the grouper's longest-first order within each mega-batch. The order is drawn after
    ``sampler``'s own draws, so a pass is a function of the generator's seed (what
    ``MultiTaskLoader`` relies on to resume mid-epoch).

    >>> g = torch.Generator().manual_seed(0)
    >>> batches = list(ShuffledBatches(range(10), 4, g))
    >>> sorted(len(b) for b in batches), sorted(i for b in batches for i in b) == list(range(10))
    ([2, 4, 4], True)
    """

    def __init__(self, sampler: Any, batch_size: int, generator: torch.Generator) -> None:
        self.sampler, self.batch_size, self.generator = sampler, batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        # a generator, so the draws happen at the first next() as BatchSampler's do: after the
        # DataLoader has drawn its base seed from the same generator
        batches = list(BatchSampler(self.sampler, self.batch_size, drop_last=False))
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        yield from (batches[i] for i in order)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def task_loader(ds: TokenizedTask, batch_size: int, seed: int = 0,
                collate: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None,
                swap_pairs: bool = False, batch_order: str = "grouped") -> DataLoader:
    """A DataLoader of length-grouped, shuffled training batches of ``ds``.

    One generator drives the shuffle (and the pair orders), the one ``MultiTaskLoader``
    seeds for every pass; iterating never draws from the global RNG. ``collate`` replaces
    ``ds.collate`` (under torchrun a ``ShardCollate``). ``swap_pairs`` applies where ``ds``
    holds both orders of its pairs. ``batch_order`` is ``"grouped"`` (the grouper's order) or
    ``"shuffled"`` (:class:`ShuffledBatches`).

    >>> from multitask_bert.data import TaskSplit
    >>> class Tok:
    ...     pad_token_id = 0
    ...     def __call__(self, texts, **kw):
    ...         return {"input_ids": [[1] * len(t.split()) for t in texts],
    ...                 "token_type_ids": [[0] * len(t.split()) for t in texts]}
    >>> split = TaskSplit("sst", "train", None, ["a", "b", "c"], ["x y", "x", "x y z"], None,
    ...                   [0, 1, 2])
    >>> loader = task_loader(TokenizedTask(split, Tok(), "cross", 8), batch_size=2)
    >>> sorted(len(b["index"]) for b in loader)
    [1, 2]
    """
    if batch_order not in BATCH_ORDERS:
        raise ValueError(f"batch_order: expected one of {BATCH_ORDERS}, got {batch_order!r}")
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int] = LengthGroupedSampler(batch_size, lengths=ds.lengths,
                                                 generator=generator)
    if swap_pairs and ds.has_both_orders:
        sampler = PairSwapSampler(sampler, len(ds), generator)
    batches: Sampler[list[int]] = (ShuffledBatches(sampler, batch_size, generator)
                                   if batch_order == "shuffled" else
                                   BatchSampler(sampler, batch_size, drop_last=False))
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate or ds.collate,
                      generator=generator)


def multitask_loader(train_sets: Mapping[str, TokenizedTask], batch_sizes: Mapping[str, int],
                     mode: str, seed: int, env: DistEnv | None = None,
                     steps_per_epoch: int | None = None, swap_pairs: bool = False,
                     equal_shards: bool = False,
                     batch_order: str = "grouped") -> mtlkit.MultiTaskLoader:
    """``mtlkit.MultiTaskLoader`` over one :func:`task_loader` per task.

    ``mode`` is the loader's (``"interleaved"`` yields ``{task: batch}``, the others
    ``(task, batch)``); ``carry_over=True`` continues a task's unfinished pass across epochs.
    Under torchrun (``env.world > 1``) each batch keeps this rank's rows (``equal_shards``:
    as many on every rank, for collectives over the embeddings).
    """
    env = env or DistEnv()
    loaders = {}
    for k, (task, ds) in enumerate(train_sets.items()):
        collate = ShardCollate(ds.collate, env, equal=equal_shards) if env.distributed else None
        loaders[task] = task_loader(ds, batch_sizes[task], seed + k, collate, swap_pairs,
                                    batch_order)
    extra: dict[str, Any] = {} if mode == "sequential" else {"steps_per_epoch": steps_per_epoch}
    return mtlkit.MultiTaskLoader(loaders, mode=mode, seed=seed, carry_over=True, **extra)


def as_task_batches(item: Any) -> dict[str, dict[str, torch.Tensor]]:
    """A MultiTaskLoader item as ``{task: batch}`` (the sampled modes yield ``(task, batch)``).

    >>> as_task_batches(("sst", {"x": 1})), as_task_batches({"a": 1, "b": 2})
    ({'sst': {'x': 1}}, {'a': 1, 'b': 2})
    """
    if isinstance(item, dict):
        return item
    task, batch = item
    return {task: batch}
