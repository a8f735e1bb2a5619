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

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from mtlkit._autograd_graph import graphs_needing_retention
from mtlkit._optimizer_wrapper import _WrappedOptimizer
from mtlkit._pcgrad_math import SurgeryStats, cosine_and_conflicts, pcgrad_weights
from mtlkit._surgery_inputs import as_named_losses, check_finite, unique_params
from mtlkit._surgery_sync import SurgerySync, Sync
from mtlkit._task_gradients import TaskGradientBuffer, wide_gramian

logger = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"]
_REDUCTIONS = ("sum", "mean")
__all__ = ["PCGrad", "SurgeryStats", "pcgrad_weights"]


def _record_reach(owner: weakref.ref, param: torch.Tensor) -> None:
    pcgrad = owner()
    if pcgrad is not None and pcgrad._reached_now is not None:
        pcgrad._reached_now.add(id(param))


class PCGrad(_WrappedOptimizer):
    """Wraps a torch optimizer and combines per-task gradients by gradient surgery.

    To its callers it is an optimizer (``param_groups``, ``state_dict``, LR schedulers,
    ``torch.amp.GradScaler``). :meth:`backward` replaces ``loss.backward()``: it leaves the
    combined gradient in every ``.grad``, so ``clip_grad_norm_`` can run before :meth:`step`.

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
        sync: What happens across processes when a ``torch.distributed`` process group with more
            than one rank is initialised (without one, nothing: no collective is ever issued).
            ``"tasks"`` (default, the exact algorithm): the T x P per-task gradients are averaged
            over ranks in one all-reduce before surgery, so every rank computes surgery on the
            global-batch task gradients and writes the same global-batch gradient to every
            ``.grad`` (task heads included: with explicit ``shared_params`` the heads' gradients
            are averaged in one more flat all-reduce). Rank 0's combination weights are broadcast
            (T numbers), so rank 0's generator draws the visiting orders for everyone: save
            rank 0's :meth:`state_dict` and load it on every rank. ``"aggregate"``: surgery on
            each rank's local gradients, then one all-reduce of the combined gradient (P numbers
            instead of T x P; cheaper, but the mean of the ranks' surgeries is not the surgery of
            the mean). ``"none"``: no communication, the caller synchronises.
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

    A plain (unwrapped) module works too, given the same initial weights on every rank.

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
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, PCGrad):
            raise TypeError(
                "optimizer: expected a torch.optim.Optimizer to wrap, "
                f"got {type(optimizer).__name__}"
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
        self._sync = SurgerySync(sync, process_group)
        super().__init__(optimizer)
        self.reduction: Reduction = reduction
        self.sync: Sync = sync
        self.log_stats = log_stats
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._explicit = None if shared_params is None else unique_params(shared_params)
        self._hooked: dict[int, Any] = {}
        self._auto_shared: set[int] = set()
        self._buffer: TaskGradientBuffer | None = None
        self._reached_now: set[int] | None = None
        self._phase: dict[str, Any] | None = None
        self.last_stats: SurgeryStats | None = None
        """The :class:`SurgeryStats` of the latest combination (``None`` before the first)."""
        self._check_shared_in_groups()

    def __repr__(self) -> str:
        return (
            f"PCGrad(reduction={self.reduction!r}, sync={self.sync!r}, "
            f"optimizer={self.optimizer!r})"
        )

    # ----------------------------------------------------------------- _WrappedOptimizer hooks
    def _params_changed(self) -> None:
        self._buffer = None

    def _drop_pending(self) -> None:
        self._phase = None

    def _check_ready(self) -> None:
        if self._phase is not None:
            raise RuntimeError(
                "PCGrad.step(): call combine() after task_backward() and before step()"
            )

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "reduction": self.reduction}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._generator.set_state(extra["generator"])

    # ----------------------------------------------------------------- gradient surgery
    def backward(
        self,
        losses: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
        retain_graph: bool | None = None,
    ) -> SurgeryStats:
        """Backpropagate each task's loss and write the surgery-combined gradient to ``.grad``.

        A second call before :meth:`step` adds to ``.grad``, as ``loss.backward()`` does (under
        a process group, each call's contribution is the global one).

        Args:
            losses: One scalar loss per task, as a sequence or a mapping ``{task: loss}``.
            retain_graph: ``None`` (default) retains a task's graph only when a later task's
                backward needs part of it (one forward shared by several heads); losses from
                separate forward passes are freed one after another.

        Returns:
            The :class:`SurgeryStats` of this combination (also in :attr:`last_stats`).

        Raises:
            ValueError: A loss is not a finite scalar (the task is named), or (with ``sync``
                active) the ranks backpropagated different tasks.

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> theta = torch.zeros(2, requires_grad=True)
            >>> opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=0)
            >>> stats = opt.backward({"a": theta @ torch.tensor([1.0, 0.0]),
            ...                       "b": theta @ torch.tensor([-1.0, 1.0])})
            >>> theta.grad, stats.num_conflicts
            (tensor([0.5000, 1.5000]), 1)
        """
        names, tensors = as_named_losses(losses)
        if self._phase is not None:
            raise RuntimeError("PCGrad.backward(): task_backward() calls are waiting for combine()")
        check_finite(names, tensors)
        retain = (
            graphs_needing_retention(tensors)
            if retain_graph is None
            else [retain_graph] * len(tensors)
        )
        for name, loss, keep in zip(names, tensors, retain, strict=True):
            self._task_backward(name, loss, keep)
        return self.combine()

    def task_backward(self, task: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backpropagate one task's loss now (per-task form); :meth:`combine` finishes the step.

        Call it right after the task's forward pass, so that only one task's activations are alive
        at a time: PCGrad then needs less peak memory than the plain summed-loss step.

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad, SurgeryStats, pcgrad_weights
            >>> body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
            >>> opt = PCGrad(torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.1))
            >>> for task, x in {"a": torch.randn(4, 3), "b": torch.randn(4, 3)}.items():
            ...     opt.task_backward(task, head(body(x)).mean())
            >>> opt.combine().tasks
            ('a', 'b')
        """
        names, tensors = as_named_losses({task: loss})
        check_finite(names, tensors)
        self._task_backward(names[0], tensors[0], retain_graph)

    def combine(self) -> SurgeryStats:
        """Combine the gradients recorded by :meth:`task_backward` and write them to ``.grad``.

        With ``sync`` active, this is where the ranks communicate (see the class docstring).

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad, SurgeryStats, pcgrad_weights
            >>> lin = torch.nn.Linear(2, 1)
            >>> opt = PCGrad(torch.optim.SGD(lin.parameters(), lr=0.1))
            >>> opt.task_backward("only", lin(torch.ones(1, 2)).sum())
            >>> opt.combine().num_conflicts
            0
        """
        if self._phase is None or not self._phase["tasks"]:
            raise RuntimeError("PCGrad.combine(): no task_backward() since the last step")
        phase, self._phase = self._phase, None
        buffer: TaskGradientBuffer = phase["buffer"]
        tasks: list[str] = phase["tasks"]
        num_tasks = len(tasks)
        rows = buffer.rows[:num_tasks]
        reached = [[id(p) in r for p in buffer.params] for r in phase["reached"]]
        had = list(phase["had_grad"])
        sync = self._sync
        sync.sent_bytes = 0
        distributed = sync.world_size() > 1
        heads: list[torch.Tensor] = []
        if distributed:
            reached, had, heads = sync.agree_step(tasks, buffer, reached, had, self.param_groups)
            if sync.mode == "tasks":
                sync.mean_(rows)  # every rank now holds the global-batch task gradients
                sync.mean_grads_(heads)
        reach = [sum(r[k] for r in reached) for k in range(len(buffer.params))]
        shared = (
            [True] * len(buffer.params) if self._explicit is not None else [n >= 2 for n in reach]
        )
        shared_runs = buffer.runs(shared)
        other_runs = buffer.runs([not s for s in shared])

        gram = torch.zeros(num_tasks, num_tasks, dtype=rows.dtype, device=rows.device)
        for a, b in shared_runs:
            gram += wide_gramian(rows[:, a:b])
        gramian_host = gram.to("cpu", torch.float64)  # the one host sync (without sync)
        finite = bool(torch.isfinite(gramian_host).all())
        if finite:
            weights = pcgrad_weights(gramian_host, self._generator)
            if self.reduction == "mean":
                weights = weights / num_tasks
        else:  # leave the overflow in .grad for GradScaler to see and skip the step
            weights = torch.ones(num_tasks, dtype=torch.float64)
        if distributed and sync.mode == "tasks":
            weights = sync.broadcast_weights(weights, rows.device)
        w = weights.to(rows.device, rows.dtype)

        accumulate = phase["accumulate"]
        for a, b in shared_runs:
            if accumulate:
                buffer.combined[a:b].addmv_(rows[:, a:b].T, w)
            else:
                torch.mv(rows[:, a:b].T, w, out=buffer.combined[a:b])
        for a, b in other_runs:
            if accumulate:
                buffer.combined[a:b] += rows[:, a:b].sum(0)
            else:
                torch.sum(rows[:, a:b], 0, out=buffer.combined[a:b])
        if distributed and sync.mode == "aggregate":
            # an earlier synced backward left equal values on every rank: averaging keeps them
            sync.mean_(buffer.combined)
            sync.mean_grads_(heads)
        buffer.publish_combined()
        for p, n, had_grad in zip(buffer.params, reach, had, strict=True):
            if n == 0 and not had_grad:
                p.grad = None  # no task reached it: leave it as plain backward would
        if self._explicit is None:
            self._auto_shared = {id(p) for p, s in zip(buffer.params, shared, strict=True) if s}

        cosine, conflicts = cosine_and_conflicts(gramian_host)
        stats = SurgeryStats(
            tuple(tasks), cosine, conflicts, weights.float(), finite, sync.sent_bytes
        )
        self.last_stats = stats
        if self.log_stats:
            logger.info(
                "pcgrad: %d conflicting pair(s) of %d tasks; cosines %s",
                conflicts,
                num_tasks,
                [[round(c, 3) for c in r] for r in cosine.tolist()],
            )
        return stats

    # ----------------------------------------------------------------- internals
    def _task_backward(self, name: str, loss: torch.Tensor, retain_graph: bool) -> None:
        phase = self._begin_phase()
        if name in phase["tasks"]:
            raise ValueError(f"task {name!r} was already backpropagated in this step")
        row = len(phase["tasks"])
        buffer: TaskGradientBuffer = phase["buffer"]
        buffer.ensure_rows(row + 1)
        buffer.route_grads_to_row(row)
        self._reached_now = set()
        try:
            if loss.requires_grad:
                loss.backward(retain_graph=retain_graph)
        finally:
            reached, self._reached_now = self._reached_now, None
        phase["tasks"].append(name)
        phase["reached"].append(reached)

    def _begin_phase(self) -> dict[str, Any]:
        if self._phase is None:
            buffer = self._layout()
            had_grad = [p.grad is not None for p in buffer.params]
            accumulate = buffer.stash_existing_grads()
            self._phase = {
                "buffer": buffer,
                "tasks": [],
                "reached": [],
                "accumulate": accumulate,
                "had_grad": had_grad,
            }
        return self._phase

    def _layout(self) -> TaskGradientBuffer:
        if self._explicit is not None:
            params = self._explicit
        else:
            group_params = unique_params(
                p for g in self.param_groups for p in g["params"] if p.requires_grad
            )
            # Shared parameters first: the Gramian is then one matrix product over one block.
            params = sorted(group_params, key=lambda p: id(p) not in self._auto_shared)
        if self._buffer is None or [id(p) for p in self._buffer.params] != [id(p) for p in params]:
            self._buffer = TaskGradientBuffer(params)
            owner = weakref.ref(self)
            for p in params:
                if id(p) not in self._hooked:
                    self._hooked[id(p)] = p.register_post_accumulate_grad_hook(
                        lambda param, owner=owner: _record_reach(owner, param)
                    )
        return self._buffer

    def _check_shared_in_groups(self) -> None:
        if self._explicit is None:
            return
        if not self._explicit:
            raise ValueError("shared_params: empty; pass None to detect shared parameters")
        in_groups = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(self._explicit):
            if id(p) not in in_groups:
                raise ValueError(
                    f"shared_params[{i}] (shape {tuple(p.shape)}) is not in the "
                    "optimizer's param groups: it would never be updated"
                )
            if not p.requires_grad:
                raise ValueError(
                    f"shared_params[{i}] (shape {tuple(p.shape)}) does not require grad"
                )
