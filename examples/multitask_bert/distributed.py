"""The pipeline under ``torchrun``: process group, sharded batches, gradient averaging.

Design (no ``DistributedDataParallel`` wrapper, so every ingredient composes the same way):

- ``torchrun`` is detected from ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; the group uses gloo
  on CPU and NCCL on GPUs (one device per ``LOCAL_RANK``).
- Rank 0's initial parameters are broadcast, so every rank starts from the same model.
- Every rank draws the same global batches (the builtin batch plan is a function of the seed)
  and keeps a disjoint, strided shard of each batch's rows (:class:`ShardCollate`). Each
  rank's task loss is scaled by ``rows_here * world / rows_global``, so the average of the
  ranks' gradients is the gradient of the global batch's mean loss, as in one process.
- After the backward(s) of a step, :func:`average_gradients` all-reduces (mean) every
  trainable parameter's gradient in one coalesced collective per dtype, before clipping. A
  gradient that no rank produced stays ``None`` (AdamW then skips the parameter, as in one
  process).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import mtlkit

logger = logging.getLogger(__name__)

ROWS_HERE, ROWS_GLOBAL = "rows_here", "rows_global"
"""Keys :class:`ShardCollate` adds to a batch (popped before the model sees it)."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    """Whether the environment says this process is one of several (``WORLD_SIZE`` > 1).

    >>> import os; os.environ.get("WORLD_SIZE", "1") == "1" or launched_by_torchrun()
    True
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, timeout_minutes: float = 30.0) -> DistEnv:
    """Initialise the process group when launched by torchrun; else a one-process env.

    CUDA devices: rank ``r`` uses ``cuda:LOCAL_RANK`` (whatever index ``device`` had) with NCCL;
    anything else uses gloo.
    """
    if not launched_by_torchrun():
        return DistEnv(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index not in (None, local):
            logger.warning("under torchrun rank %d uses cuda:%d (LOCAL_RANK), not %s", rank,
                           local, device)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": timedelta(minutes=timeout_minutes)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend, **kwargs)
    logger.info("torchrun: rank %d of world size %d (local rank %d), backend %s, device %s",
                rank, world, local, backend, device)
    return DistEnv(rank, world, local, device)


def teardown() -> None:
    """Destroy the process group if one is initialised (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_module(module: torch.nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank."""
    if not env.distributed:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """``src``'s ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is True on some rank (e.g. a time budget ran out)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_gradients(params: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """:func:`mtlkit.average_gradients` over ``env``'s process group (no-op in one process)."""
    if env.distributed:
        mtlkit.average_gradients(params)


def parameters_agree(module: torch.nn.Module, env: DistEnv) -> bool:
    """Whether every rank holds exactly the same parameters (one small all-gather)."""
    if not env.distributed:
        return True
    with torch.no_grad():
        sums = [float(p.detach().double().sum()) for p in module.parameters()]
        wsum = [float((p.detach().double().reshape(-1)
                       * torch.arange(1, p.numel() + 1, dtype=torch.float64,
                                      device=p.device).remainder(97)).sum())
                for p in module.parameters()]
    fingerprints = all_gather_objects((sums, wsum), env)
    return all(fp == fingerprints[0] for fp in fingerprints)


def rank_rows(n: int, env: DistEnv, equal: bool = False) -> list[int]:
    """This rank's rows of a global batch of ``n`` rows: ``rank, rank + world, ...``.

    ``equal=True`` drops the last ``n % world`` rows so every rank has as many (needed by
    collectives on the embeddings, e.g. SimCSE's gather).

    >>> rank_rows(5, DistEnv(rank=1, world=2)), rank_rows(5, DistEnv(rank=0, world=2), True)
    ([1, 3], [0, 2])
    """
    if not env.distributed:
        return list(range(n))
    limit = n - n % env.world if equal else n
    return list(range(env.rank, limit, env.world))


class ShardCollate:
    """A ``collate_fn`` that keeps this rank's rows of the global batch and pads them alone.

    The batch gets ``rows_here`` and ``rows_global`` (tensors). A rank left without rows
    (a global batch smaller than the world) gets the batch's first row with ``rows_here = 0``,
    so its loss is scaled by 0 and it still joins every collective.

    >>> c = ShardCollate(lambda items: {"x": torch.tensor(items)}, DistEnv(rank=1, world=2))
    >>> {k: v.tolist() for k, v in c([10, 11, 12]).items()}
    {'x': [11], 'rows_here': 1, 'rows_global': 3}
    """

    def __init__(self, collate: Callable[[list[Any]], dict[str, torch.Tensor]], env: DistEnv,
                 equal: bool = False) -> None:
        self.collate, self.env, self.equal = collate, env, equal

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        rows = rank_rows(len(items), self.env, self.equal)
        here = len(rows)
        batch = self.collate([items[i] for i in rows] if rows else [items[0]])
        batch[ROWS_HERE] = torch.tensor(here)
        batch[ROWS_GLOBAL] = torch.tensor(len(items) - (len(items) % self.env.world
                                                       if self.equal else 0))
        return batch


def pop_loss_scale(batch: dict[str, torch.Tensor], env: DistEnv) -> float:
    """Remove the shard keys from ``batch``; the factor for this rank's mean loss
    (``rows_here * world / rows_global``; 1.0 in one process or for unsharded batches)."""
    here, total = batch.pop(ROWS_HERE, None), batch.pop(ROWS_GLOBAL, None)
    if here is None or total is None or int(total) == 0:
        return 1.0
    return int(here) * env.world / int(total)
