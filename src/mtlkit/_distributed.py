"""Small helpers around :mod:`torch.distributed` that work with or without a process group."""

from __future__ import annotations

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
                f"all_gather_with_grad needs the same batch size on every rank, got {counts}"
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
