"""The one home of mtlkit's distributed helpers; each works with or without a process group.

Rank queries, :func:`stable_hash` (a seed or signature identical in every process),
:func:`average_gradients` (the plain data-parallel mean of ``.grad``) and
:func:`all_gather_with_grad` (a gather that keeps the graph, for in-batch contrastive losses).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a default process group is initialised (and so collectives may be used)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def stable_hash(*parts: object, signed: bool = False) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process and every run.

    Python's ``hash`` of a string is salted per process, so ranks would disagree; this hashes
    the ``repr`` of each part with BLAKE2b. ``signed=True`` gives a value that fits an int64
    tensor (for collectives).

    Example:
        >>> stable_hash("mtlkit.tasks", 0, 1) == stable_hash("mtlkit.tasks", 0, 1)
        True
        >>> -2**63 <= stable_hash("a", "b", signed=True) < 2**63
        True
    """
    text = "\x1f".join(repr(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=signed)


def average_gradients(params: Iterable[torch.Tensor], group: object | None = None) -> None:
    """Replace every ``p.grad`` by its mean over the ranks: one all-reduce per (device, dtype).

    The plain data-parallel step without :class:`~torch.nn.parallel.DistributedDataParallel`
    (e.g. when each step's task set decides which parameters get a gradient). A rank without a
    ``.grad`` for a parameter counts as zeros; a parameter that no rank gave a gradient keeps
    ``grad = None``, on every rank. No-op without a process group or with one process.

    Args:
        params: The parameters whose gradients to average (the same list, in the same order,
            on every rank).
        group: The process group (the default group when ``None``).

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> p.grad = torch.tensor([1.0, 3.0])
        >>> average_gradients([p])           # one process: unchanged
        >>> p.grad
        tensor([1., 3.])
    """
    params = list(params)
    if not params or not is_distributed() or dist.get_world_size(group) == 1:
        return
    world = dist.get_world_size(group)
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), ps in buckets.items():
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
        present = torch.tensor([float(p.grad is not None) for p in ps], device=device, dtype=dtype)
        flat = torch.cat([*parts, present])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat /= world
        offset = 0
        for p, share in zip(ps, flat[-len(ps):].tolist(), strict=True):
            size = p.numel()
            if share > 0:  # some rank had a gradient
                mean = flat[offset : offset + size].view_as(p)
                if p.grad is None:
                    p.grad = mean.clone()
                else:
                    p.grad.copy_(mean)
            offset += size


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward routes each rank's slice of the gradient home.

    ``torch.distributed.all_gather`` cuts the graph; here the backward all-reduces (sums) the
    incoming gradient, because every rank's loss depends on every rank's rows, and returns the
    slice that belongs to this rank.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
        counts = [int(s.item()) for s in sizes]
        if len(set(counts)) != 1:
            raise ValueError(
                f"tensor: expected the same batch size (dim 0) on every rank, got {counts}"
            )
        chunks = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(chunks, tensor.contiguous())
        ctx.rank = dist.get_rank()
        ctx.batch = tensor.shape[0]
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping gradients to every rank.

    Without a process group (or with one process) it returns ``tensor`` itself.

    Example:
        >>> import torch
        >>> all_gather_with_grad(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)
