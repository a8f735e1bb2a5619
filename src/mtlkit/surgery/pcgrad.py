"""PCGrad: gradient surgery for multi-task learning (Yu et al., 2020, "Gradient Surgery for
Multi-Task Learning").

For each task ``i``, PCGrad starts from the task's gradient ``g_i`` of the shared parameters and,
visiting the other tasks ``j`` in a random order, removes the projection onto the ORIGINAL
``g_j`` whenever the current vector conflicts with it (negative dot product):

.. math:: g_i \\leftarrow g_i - \\frac{g_i \\cdot g_j}{\\lVert g_j \\rVert^2} g_j

and the projected gradients are summed (or averaged). Because every projection is onto an
original ``g_j``, each projected gradient is a linear combination of the original ones, and the
coefficients depend on the dot products alone. So the whole algorithm is a function of the
T x T Gramian ``G = J J^T`` of the per-task gradient matrix ``J``: :func:`pcgrad_weights` turns
``G`` into weights ``w`` and the combined gradient is ``w^T J``. Only ``G`` (T x T numbers) ever
goes to the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from mtlkit.surgery._collectives import Sync
from mtlkit.surgery.optimizer import MultiTaskOptimizer, Reduction
from mtlkit.weighting._seeded import host_generator
from mtlkit.weighting.pcgrad import PCGrad as PCGradWeighting
from mtlkit.weighting.pcgrad import pcgrad_weights

__all__ = ["PCGrad", "pcgrad_weights"]


class PCGrad(MultiTaskOptimizer):
    """Wraps a torch optimizer and combines per-task gradients by gradient surgery.

    This is :class:`MultiTaskOptimizer` with the :class:`mtlkit.weighting.PCGrad` weighting:
    everything said there holds here (optimizer surface, detection of the shared parameters,
    heads untouched, the per-task form, GradScaler, accumulation, ``sync``).

    Args:
        optimizer: The optimizer to wrap (it owns the parameters and the update rule).
        shared_params: The parameters that get surgery. ``None`` (default): those that two or more
            tasks' losses reach in each step, found by hooks during the backward passes.
            Every other parameter (a task head) gets the plain gradient of its loss, untouched.
            Shared parameters must be in the optimizer's param groups (matched by identity).
        reduction: ``"sum"`` (the paper) or ``"mean"`` of the projected task gradients. It applies
            to the shared parameters; task-specific parameters always get their task's gradient.
        seed: Seed of the dedicated generator drawing the visiting orders (its state is part of
            :meth:`state_dict`); ``None`` seeds it nondeterministically.
        log_stats: Log each step's conflicts and cosines at INFO level.
        sync: ``"tasks"`` (default, the exact algorithm), ``"aggregate"`` or ``"none"``; see
            :class:`MultiTaskOptimizer`. Under ``"tasks"`` rank 0's generator draws the visiting
            orders for everyone: save rank 0's :meth:`state_dict` and load it on every rank.
        process_group: The group to synchronise over (``None``: the default group).

    Communication per step and rank (payload of the big collectives, ``s`` bytes per element,
    P the buffer's parameters, H the heads outside it): ``"tasks"`` ``(T * P + H) * s``,
    ``"aggregate"`` ``(P + H) * s``, plus three small collectives in ``"tasks"`` (two in
    ``"aggregate"``): a signature all-gather that raises a clear error when the ranks
    backpropagated different tasks, a one-byte-per-parameter-and-task MAX all-reduce that makes
    the shared/unreached decisions identical, and the T-number weight broadcast.
    :attr:`SurgeryStats.comm_bytes` reports what this rank sent in the step.

    With ``DistributedDataParallel`` (initial weights broadcast, buffer sync), DDP must not
    all-reduce as well: run the forward pass AND :meth:`backward` inside ``model.no_sync()``
    (DDP prepares its reducer in the forward, so ``no_sync`` must cover the forward too)::

        model = DistributedDataParallel(net)
        opt = PCGrad(torch.optim.AdamW(model.parameters()), sync="tasks")
        with model.no_sync():
            losses = compute_task_losses(model, batch)   # the forward, under no_sync
            opt.backward(losses)                         # PCGrad all-reduces
        opt.step()

    Departures from the paper's pseudo-code: surgery is restricted to shared parameters (heads are
    untouched), and the combination runs on the Gramian (the same numbers, computed once).

    Example:
        >>> import torch
        >>> from mtlkit import PCGrad, SurgeryStats, pcgrad_weights
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> body, head_a = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
        >>> head_b = torch.nn.Linear(4, 1)
        >>> params = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
        >>> opt = PCGrad(torch.optim.SGD(params, lr=0.1), seed=0)
        >>> x = torch.randn(8, 4)
        >>> losses = {"a": head_a(body(x)).pow(2).mean(), "b": (head_b(body(x)) - 1).pow(2).mean()}
        >>> opt.zero_grad()
        >>> stats = opt.backward(losses)
        >>> stats.tasks, stats.cosine.shape, stats.comm_bytes   # no process group: no traffic
        (('a', 'b'), torch.Size([2, 2]), 0)
        >>> torch.nn.utils.clip_grad_norm_(params, 1.0)  # doctest: +ELLIPSIS
        tensor(...)
        >>> opt.step()
    """

    _state_key = "pcgrad"

    def __init__(
        self,
        optimizer: Optimizer,
        shared_params: Iterable[torch.Tensor] | None = None,
        reduction: Reduction = "sum",
        seed: int | None = None,
        log_stats: bool = False,
        sync: Sync = "tasks",
        process_group: Any = None,
    ) -> None:
        super().__init__(optimizer, PCGradWeighting(seed), shared_params=shared_params,
                         reduction=reduction, sync=sync, process_group=process_group,
                         log_stats=log_stats)

    def __repr__(self) -> str:
        return (
            f"PCGrad(reduction={self.reduction!r}, sync={self.sync!r}, "
            f"optimizer={self.optimizer!r})"
        )

    # The checkpoint format of earlier versions, {"generator": ..., "reduction": ...}, plus (from
    # format 2) the "version" and "auto_shared" of MultiTaskOptimizer's layout.
    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self.weighting.generator.get_state(), "reduction": self.reduction,
                **self._layout_state()}

    def _check_extra_state(self, extra: Mapping[str, Any]) -> None:
        if "reduction" in extra and extra["reduction"] != self.reduction:
            raise ValueError(
                f"state_dict['pcgrad']['reduction']: expected {self.reduction!r} (this "
                f"optimizer's), got {extra['reduction']!r}"
            )
        self._check_layout_state(extra)
        host_generator(extra.get("generator"), "state_dict['pcgrad']['generator']")

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        state = host_generator(extra["generator"], "state_dict['pcgrad']['generator']")
        self.weighting.generator.set_state(state)
        self._load_layout_state(extra)
