"""PCGrad across processes: the collectives behind ``PCGrad(sync=...)``.

Three modes, active only when a process group is initialised and has more than one rank:

``"tasks"`` (the exact algorithm)
    The T x P per-task gradient matrix is averaged over ranks in one all-reduce before the
    Gramian, so every rank runs surgery on the global-batch task gradients and writes the same
    combined gradient. Parameters outside the buffer (task heads with explicit ``shared_params``)
    are averaged in one more, flat all-reduce. The combination weights (T float64 numbers) are
    then broadcast from rank 0, so rounding differences between ranks can never flip a
    conflict test and let the replicas drift apart.
``"aggregate"``
    Surgery per rank on its local task gradients, then one all-reduce of the combined gradient
    (P numbers instead of T x P). Cheaper, but the average of per-rank surgeries is not surgery on
    the average: not the same algorithm.
``"none"``
    No communication: the caller synchronises.

Before the big collective, two small ones make the ranks agree: an all-gather of a fixed-size
signature (number of tasks, a hash of the ordered task names, the buffer's layout), so that a rank
that backpropagated other tasks raises a clear error instead of hanging or mixing tasks; and one
MAX all-reduce of which parameters each task reached (plus which heads hold a gradient), so the
shared/unreached decisions and the buffer layout stay identical everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist

from mtlkit._distributed import is_distributed, stable_hash
from mtlkit._task_gradients import TaskGradientBuffer

Sync = Literal["tasks", "aggregate", "none"]
SYNC_MODES = ("tasks", "aggregate", "none")


class SurgerySync:
    """The collectives of one :class:`~mtlkit.PCGrad`; ``sent_bytes`` counts this step's payload.

    Args:
        mode: ``"tasks"``, ``"aggregate"`` or ``"none"``.
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

    def _src(self) -> int:
        return 0 if self.group is None else dist.get_global_rank(self.group, 0)

    def _count(self, tensor: torch.Tensor) -> None:
        self.sent_bytes += tensor.numel() * tensor.element_size()

    def agree(
        self,
        tasks: Sequence[str],
        layout: Sequence[int],
        flags: torch.Tensor,
    ) -> torch.Tensor:
        """Check every rank has the same tasks and layout, then OR ``flags`` over ranks.

        Args:
            tasks: The task names backpropagated in this step, in order.
            layout: Integers that must match on every rank (sizes of the buffer and the heads).
            flags: A bool vector whose size ``layout`` determines (reach and has-gradient flags).

        Raises:
            ValueError: The ranks backpropagated different tasks, or their layouts differ.
        """
        world = self.world_size()
        device = flags.device
        names = stable_hash(*tasks, signed=True)
        signature = torch.tensor([len(tasks), names, *layout], device=device)
        gathered = [torch.empty_like(signature) for _ in range(world)]
        self._count(signature)
        dist.all_gather(gathered, signature, group=self.group)
        if any(not torch.equal(g, signature) for g in gathered):
            every = [None] * world
            dist.all_gather_object(every, list(tasks), group=self.group)  # every rank is here
            if any(t != list(tasks) for t in every):
                listing = "; ".join(f"rank {r}: {t}" for r, t in enumerate(every))
                raise ValueError(
                    "PCGrad(sync=...): the ranks backpropagated different tasks in this step "
                    f"({listing}); every rank must backpropagate the same tasks in the same order"
                )
            raise ValueError(
                "PCGrad(sync=...): the ranks' parameter layouts differ "
                f"({[g.tolist()[2:] for g in gathered]}); every rank needs the same model and "
                "param groups"
            )
        packed = flags.to(torch.uint8)
        self._count(packed)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=self.group)
        return packed.bool()

    def agree_step(
        self,
        tasks: list[str],
        buffer: TaskGradientBuffer,
        reached: list[list[bool]],
        had: list[bool],
        param_groups: list[dict],
    ) -> tuple[list[list[bool]], list[bool], list[torch.Tensor]]:
        """:meth:`agree` on one PCGrad step: OR the reach, had-gradient and head flags.

        Args:
            tasks: The step's task names, in order.
            buffer: The step's task-gradient buffer.
            reached: ``reached[t][k]``: task ``t`` reached ``buffer.params[k]`` on this rank.
            had: Whether each buffer parameter held a gradient before the step.
            param_groups: The optimizer's groups; their parameters outside the buffer that
                require grad are the heads.

        Returns:
            The global ``reached`` and ``had`` flags, and the heads that hold a gradient on some
            rank (the ones to average).
        """
        in_buffer = {id(p) for p in buffer.params}
        seen: set[int] = set()
        heads = []
        for p in (q for g in param_groups for q in g["params"]):
            if p.requires_grad and id(p) not in in_buffer and id(p) not in seen:
                seen.add(id(p))
                heads.append(p)
        n = len(buffer.params)
        local = [v for r in reached for v in r] + had + [p.grad is not None for p in heads]
        layout = [buffer.numel, n, len(heads), sum(p.numel() for p in heads)]
        flags = self.agree(
            tasks, layout, torch.tensor(local, dtype=torch.bool, device=buffer.rows.device)
        ).tolist()
        size = len(tasks) * n
        return (
            [flags[i : i + n] for i in range(0, size, n)],
            flags[size : size + n],
            [p for p, f in zip(heads, flags[size + n :], strict=True) if f],
        )

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
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in bucket
                ]
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

    def broadcast_weights(self, weights: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rank 0's weights (a float64 CPU tensor) on every rank."""
        on_device = weights.to(device, torch.float64)
        self._count(on_device)
        dist.broadcast(on_device, src=self._src(), group=self.group)
        return on_device.cpu()


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
