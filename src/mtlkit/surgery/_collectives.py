"""The collectives of one multi-task optimizer, each counted in :attr:`Collectives.sent_bytes`.

Before a step's big collective, two small ones make the ranks agree: an all-gather of a
fixed-size signature (number of tasks, a hash of the ordered task names, the buffer's layout),
so that a rank that backpropagated other tasks raises a clear error instead of hanging or
mixing tasks; and one MAX all-reduce of per-parameter flags (which parameters each task
reached, which hold a gradient), so the shared/unreached decisions stay identical everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist

from mtlkit._distributed import is_distributed, stable_hash

Sync = Literal["tasks", "aggregate", "none"]
SYNC_MODES = ("tasks", "aggregate", "none")


class Collectives:
    """Collectives over ``process_group``; ``sent_bytes`` counts the payload since the reset.

    Args:
        mode: ``"tasks"``, ``"aggregate"`` or ``"none"`` (``"none"`` never communicates).
        process_group: The group to synchronise over (``None``: the default group).
    """

    def __init__(self, mode: Sync, process_group: object | None) -> None:
        if mode not in SYNC_MODES:
            raise ValueError(f"sync: expected one of {SYNC_MODES}, got {mode!r}")
        if process_group is not None and not (
            dist.is_available() and isinstance(process_group, dist.ProcessGroup)
        ):
            raise TypeError(
                "process_group: expected a torch.distributed.ProcessGroup or None, "
                f"got {type(process_group).__name__}"
            )
        self.mode: Sync = mode
        self.group = process_group
        self.sent_bytes = 0

    def world_size(self) -> int:
        """Ranks to synchronise with; 1 (nothing to do) without an initialised group."""
        if self.mode == "none" or not is_distributed():
            return 1
        return dist.get_world_size(self.group)

    def _count(self, tensor: torch.Tensor) -> None:
        self.sent_bytes += tensor.numel() * tensor.element_size()

    def agree(self, tasks: Sequence[str], layout: Sequence[int],
              flags: torch.Tensor) -> list[bool]:
        """Check every rank has the same tasks and layout, then OR ``flags`` over ranks.

        Args:
            tasks: The task names backpropagated in this step, in order.
            layout: Integers that must match on every rank (sizes of the buffer and the heads).
            flags: A bool vector whose size ``layout`` determines.

        Raises:
            ValueError: The ranks backpropagated different tasks, or their layouts differ.
        """
        world = self.world_size()
        names = stable_hash(*tasks, signed=True)
        signature = torch.tensor([len(tasks), names, *layout], device=flags.device)
        gathered = [torch.empty_like(signature) for _ in range(world)]
        self._count(signature)
        dist.all_gather(gathered, signature, group=self.group)
        if not bool(torch.stack(gathered).eq(signature).all()):
            every: list = [None] * world
            dist.all_gather_object(every, list(tasks), group=self.group)  # every rank is here
            if any(t != list(tasks) for t in every):
                listing = "; ".join(f"rank {r}: {t}" for r, t in enumerate(every))
                raise ValueError(
                    "losses: expected the same tasks in the same order on every rank, "
                    f"got {listing}"
                )
            raise ValueError(
                "sync: expected the same model and param groups on every rank, got layouts "
                f"{[g.tolist()[2:] for g in gathered]}"
            )
        packed = flags.to(torch.uint8)
        self._count(packed)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=self.group)
        return packed.bool().tolist()

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a contiguous tensor over ranks, in place."""
        self._count(tensor)
        dist.all_reduce(tensor, group=self.group)
        return tensor.div_(self.world_size())

    def mean_grads_(self, params: Sequence[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` over ranks: one flat all-reduce per dtype/device.

        A parameter whose ``.grad`` is ``None`` here (another rank has one) counts as zeros.
        """
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((p.dtype, p.device), []).append(p)
        for bucket in buckets.values():
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                 for p in bucket]
            )
            self.mean_(flat)
            start = 0
            for p in bucket:
                chunk = flat[start : start + p.numel()].view_as(p)
                start += p.numel()
                if p.grad is None:
                    p.grad = chunk
                else:
                    p.grad.copy_(chunk)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` (of the group) on every rank, in place."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._count(tensor)
        dist.broadcast(tensor, src=src, group=self.group)
        return tensor


def bytes_per_step(
    mode: Sync,
    num_tasks: int,
    numel: int,
    element_size: int = 4,
    head_numel: int = 0,
) -> int:
    """Payload of the two big collectives per step (what each rank sends into them).

    ``"tasks"``: ``T * P + H`` elements (the task gradients, then the heads that live outside the
    buffer with explicit ``shared_params``); ``"aggregate"``: ``P + H``. The small agreement
    collectives (a few dozen bytes plus one byte per parameter tensor and task) are not counted.
    A ring all-reduce puts about twice the payload on each rank's link.

    Example:
        >>> bytes_per_step("tasks", 3, 1000), bytes_per_step("aggregate", 3, 1000)
        (12000, 4000)
    """
    if mode == "none":
        return 0
    rows = num_tasks * numel if mode == "tasks" else numel
    return (rows + head_numel) * element_size
