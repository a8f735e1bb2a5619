"""MultiTaskOptimizer: any weighting of the task gradients (or losses) as an optimizer wrapper.

The expensive part of every Gramian-based method is the same: the per-task gradients of the
shared parameters as the rows of T x P buffers ``J``, their T x T Gramian ``G = J J^T``, T
weights ``w`` and the combined gradient ``w @ J``. This wrapper does it once, for any
:class:`~mtlkit.weighting.Weighting`; a :class:`~mtlkit.weighting.LossWeighting` needs no
per-task gradient and gets one backward of its weighted loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from mtlkit.surgery._collectives import Sync
from mtlkit.surgery._combine import Combiner
from mtlkit.surgery._graph import graphs_needing_retention
from mtlkit.surgery._inputs import (
    as_named_losses,
    check_parameters,
    resolve_weighting,
    unique_params,
)
from mtlkit.surgery._loss_step import loss_step
from mtlkit.surgery._rows import StackedRows, UnsplittableModel, parse_rows, split_layers
from mtlkit.surgery._state import MultiTaskState
from mtlkit.surgery._stats import SurgeryStats, cosine_and_conflicts, describe
from mtlkit.surgery._step import StepRecorder
from mtlkit.surgery._sync import SurgerySync
from mtlkit.surgery._wrapper import _WrappedOptimizer

logger = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"]
REDUCTIONS = ("sum", "mean")
Losses = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


class MultiTaskOptimizer(MultiTaskState, _WrappedOptimizer):
    """Wraps a torch optimizer and combines the tasks' gradients with a weighting.

    To its callers it is an optimizer (``param_groups``, ``state_dict``, LR schedulers,
    ``torch.amp.GradScaler``). :meth:`backward` replaces ``loss.backward()``: it leaves the
    combined gradient in every ``.grad``, so ``clip_grad_norm_`` can run before :meth:`step`.

    With a :class:`~mtlkit.weighting.Weighting` (PCGrad, UPGrad, MGDA, ...) each task is
    backpropagated into its row of a T x P buffer ``J``, the weighting maps the Gramian
    ``J J^T`` to weights ``w`` and the shared parameters get ``w @ J``; every other parameter
    (a task head) gets the plain gradient of its loss, untouched. When one forward runs over
    all the tasks' batches stacked along dim 0, :meth:`stacked` fills ``J`` from one backward.
    With a :class:`~mtlkit.weighting.LossWeighting` (uncertainty weighting, DWA, FAMO) the
    weighted loss is backpropagated once; its parameters must be in the wrapped optimizer.

    Args:
        optimizer: The optimizer to wrap (it owns the parameters and the update rule).
        weighting: A weighting instance, or a name for ``mtlkit.weighting.by_name``.
        shared_params: The parameters whose task gradients are combined. ``None`` (default):
            those that two or more tasks' losses reach in each step, found by hooks during
            the backward passes. They must be in the optimizer's param groups. With a loss
            weighting they are checked but change nothing (no per-task gradient is formed),
            so that one call site can switch between the two kinds.
        reduction: ``"sum"`` or ``"mean"`` (the weights divided by T). It applies to the
            shared parameters; task-specific parameters always get their task's gradient.
        sync: What happens across processes when a ``torch.distributed`` process group with
            more than one rank is initialised (without one, no collective is ever issued).
            ``"tasks"`` (default, exact): the T x P task gradients are averaged over ranks in
            one all-reduce, every rank combines the global-batch gradients and rank 0's T
            weights are broadcast (save rank 0's :meth:`state_dict`); with a loss weighting
            the T losses are averaged before the weighting and the gradients after the
            backward. ``"aggregate"``: each rank combines its local gradients, then one
            all-reduce of the result (P numbers instead of T x P; not the same algorithm).
            ``"none"``: no communication, the caller synchronises.
        process_group: The group to synchronise over (``None``: the default group).
        log_stats: Log each step's conflicts and cosines at INFO level.
        grad_scaler: A ``torch.amp.GradScaler`` to apply for you: pass the *unscaled* losses,
            each task's backward runs on the scaled loss and the weighting sees the Gramian of
            the unscaled gradients; then ``grad_scaler.step(opt)`` as usual. Needed for
            weightings that change with a common scale of the gradients (Nash-MTL, FairGrad,
            a norm-based one). Without it, scaled losses passed in are fine for weightings
            that ignore that scale (PCGrad, UPGrad, MGDA, Mean, Sum).

    One step reads the device once (the Gramian, the weights and the loss finiteness flags in
    one copy); a weighting whose ``on_host`` attribute is true (a host loop) is handed that host
    copy of the Gramian. A non-finite loss sets the managed gradients to NaN, so that a
    ``GradScaler`` skips the step, and makes a direct :meth:`step` raise ``ValueError``; a
    non-finite gradient writes the plain sum, overflow included, for the scaler to see.

    With ``DistributedDataParallel``, run the forward pass AND :meth:`backward` inside
    ``model.no_sync()`` (DDP prepares its reducer in the forward): the optimizer all-reduces.

    Example:
        >>> import torch
        >>> from mtlkit import MultiTaskOptimizer
        >>> from mtlkit.weighting import PCGrad
        >>> body, head_a = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
        >>> head_b = torch.nn.Linear(4, 1)
        >>> params = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
        >>> opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), PCGrad(seed=0))
        >>> x = torch.randn(8, 4)
        >>> stats = opt.backward({"a": head_a(body(x)).mean(), "b": -head_b(body(x)).mean()})
        >>> stats.tasks, stats.weights.shape
        (('a', 'b'), torch.Size([2]))
        >>> opt.step()
    """

    _state_key = "multitask"

    def __init__(
        self,
        optimizer: Optimizer,
        weighting: Any,
        shared_params: Iterable[torch.Tensor] | None = None,
        reduction: Reduction = "sum",
        sync: Sync = "tasks",
        process_group: Any = None,
        log_stats: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(
                "grad_scaler: expected a torch.amp.GradScaler or None, "
                f"got {type(grad_scaler).__name__}"
            )
        self.grad_scaler = grad_scaler
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, MultiTaskOptimizer):
            raise TypeError(
                "optimizer: expected a torch.optim.Optimizer to wrap, "
                f"got {type(optimizer).__name__}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.weighting = resolve_weighting(weighting)
        """The weighting combining the tasks (its state is part of :meth:`state_dict`)."""
        self._sync = SurgerySync(sync, process_group)
        super().__init__(optimizer)
        self.reduction: Reduction = reduction
        self.sync: Sync = sync
        self.log_stats = log_stats
        self._explicit = None if shared_params is None else unique_params(shared_params)
        check_parameters(self.weighting, self._explicit, self.param_groups)
        self._combiner = Combiner(self.weighting, reduction == "mean")
        self._scale = None if grad_scaler is None else grad_scaler.scale
        self._steps = StepRecorder(self._explicit)
        self._nonfinite: tuple[str, ...] = ()
        self._stacked: StackedRows | None = None
        self.last_stats: SurgeryStats | None = None
        """The :class:`SurgeryStats` of the latest combination (``None`` before the first)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(weighting={self.weighting!r}, reduction={self.reduction!r}, "
            f"sync={self.sync!r}, optimizer={self.optimizer!r})"
        )

    # ----------------------------------------------------------------- _WrappedOptimizer hooks
    def _params_changed(self) -> None:
        self._steps.grads = None

    def _drop_pending(self) -> None:
        self._steps.pending = None
        self._nonfinite = ()

    def _check_ready(self) -> None:
        if self._steps.pending is not None:
            raise RuntimeError(
                f"{type(self).__name__}.step(): call combine() after task_backward() and "
                "before step()"
            )
        if self._nonfinite:
            name = self._nonfinite[0]
            raise ValueError(
                f"losses[{name!r}]: expected a finite loss, got a non-finite one in the last "
                "backward (a GradScaler would have skipped this step; call zero_grad())"
            )

    # ----------------------------------------------------------------- the public steps
    def backward(self, losses: Losses, retain_graph: bool | None = None) -> SurgeryStats:
        """Backpropagate each task's loss and write the combined gradient to ``.grad``.

        A second call before :meth:`step` adds to ``.grad``, as ``loss.backward()`` does (under
        a process group, each call's contribution is the global one). If a task's backward
        raises, the step is dropped and the managed ``.grad`` are what they were before.

        Args:
            losses: One scalar loss per task, as a sequence or a mapping ``{task: loss}``.
            retain_graph: ``None`` (default) retains a task's graph only when a later task's
                backward needs part of it (one forward shared by several heads); losses from
                separate forward passes are freed one after another.

        Returns:
            The :class:`SurgeryStats` of this combination (also in :attr:`last_stats`).

        Raises:
            TypeError, ValueError: ``losses`` is not a sequence or mapping of scalar floating
                tensors (the task is named), or (with ``sync`` active) the ranks backpropagated
                different tasks.

        Example:
            >>> import torch
            >>> from mtlkit import MultiTaskOptimizer
            >>> from mtlkit.weighting import PCGrad
            >>> theta = torch.zeros(2, requires_grad=True)
            >>> opt = MultiTaskOptimizer(torch.optim.SGD([theta], lr=1.0), PCGrad(seed=0))
            >>> stats = opt.backward({"a": theta @ torch.tensor([1.0, 0.0]),
            ...                       "b": theta @ torch.tensor([-1.0, 1.0])})
            >>> theta.grad, stats.num_conflicts
            (tensor([0.5000, 1.5000]), 1)
        """
        names, tensors = as_named_losses(losses)
        if self._steps.pending is not None:
            raise RuntimeError(
                f"{type(self).__name__}.backward(): task_backward() calls are waiting for "
                "combine()"
            )
        if self._stacked is not None and self.weighting.requires_gramian:
            return self._stacked_backward(names, tensors, bool(retain_graph))
        if not self.weighting.requires_gramian:
            params = self._trainable()
            stats = loss_step(self.weighting, names, tensors, params, self.reduction == "mean",
                              self._sync, retain_graph, self.grad_scaler)
            return self._record(stats, stats.nonfinite)
        retain = (graphs_needing_retention(tensors) if retain_graph is None
                  else [retain_graph] * len(tensors))
        try:
            for name, loss, keep in zip(names, tensors, retain, strict=True):
                self._steps.record(name, loss, keep, self._trainable, self._scale)
        except BaseException:
            self._steps.abort()
            raise
        return self.combine()

    @contextmanager
    def stacked(self, module: torch.nn.Module, rows: Mapping[str, int] | Sequence[int]):
        """A block whose :meth:`backward` gets every task's gradient from ONE backward pass.

        For one forward over the tasks' batches stacked along dim 0 (``torch.cat``): without
        this block each task needs its own backward through the whole shared graph (T times
        the plain backward). Inside it, the shared layers of ``module`` record their inputs,
        the summed loss is backpropagated once without forming the summed weight gradients,
        and each layer's output gradient is split by the tasks' rows into their rows of the
        gradient buffer: the step costs about what the plain summed step costs. The
        gradients are exactly the per-task ones, on two conditions the caller guarantees:
        task ``t``'s loss depends only on its own rows, and no layer mixes rows (no batch
        norm, no in-batch negatives across tasks; attention within a sequence is fine).

        The shared parameters (``shared_params``, or with ``None`` the trainable parameters of
        ``module`` in the optimizer) must sit in ``nn.Linear``, ``nn.Embedding``,
        ``nn.LayerNorm`` or transformers' ``Conv1D`` layers of ``module`` whose forward runs
        them (as in BERT or GPT-2); every
        layer must see all the rows along dim 0. A loss weighting makes the block a no-op
        (it always needs one backward only).

        Args:
            module: The shared module the stacked batch goes through.
            rows: Each task's number of rows, in the order they are stacked: ``{task: n}``
                (names as in :meth:`backward`'s mapping) or a sequence (for a sequence of
                losses).

        Raises:
            ValueError: A shared parameter outside ``module`` or a bad row count.
            mtlkit.UnsplittableModel: (a ``ValueError``) a shared parameter in a layer of
                another type; in the forward, a shared layer that sees another number of rows;
                in :meth:`backward`, a shared weight used outside its layer's forward (the
                step is dropped, the gradients left as they were).

        Example:
            >>> import torch
            >>> from mtlkit import MultiTaskOptimizer
            >>> body, head_a, head_b = (torch.nn.Linear(4, 4), torch.nn.Linear(4, 1),
            ...                         torch.nn.Linear(4, 1))
            >>> params = [*body.parameters(), *head_a.parameters(), *head_b.parameters()]
            >>> opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), "upgrad",
            ...                          shared_params=body.parameters())
            >>> x_a, x_b = torch.randn(3, 4), torch.randn(5, 4)
            >>> with opt.stacked(body, rows={"a": 3, "b": 5}):
            ...     h_a, h_b = body(torch.cat([x_a, x_b])).split([3, 5])
            ...     stats = opt.backward({"a": head_a(h_a).mean(), "b": head_b(h_b).mean()})
            >>> stats.tasks
            ('a', 'b')
            >>> opt.step()
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        names, counts = parse_rows(rows)
        if self._stacked is not None:
            raise RuntimeError("stacked(): expected no enclosing stacked() block, got one")
        if not self.weighting.requires_gramian:
            yield
            return
        if self._explicit is not None:
            layers = split_layers(module, self._explicit)
        else:
            trainable = {id(p) for p in self._trainable()}
            own = [p for p in module.parameters() if id(p) in trainable]
            if not own:
                raise ValueError("module: expected trainable parameters in the optimizer, "
                                 "got none")
            layers = split_layers(module, own)
        split = StackedRows(names, counts, layers)
        with split.hooked():
            self._stacked = split
            try:
                yield
            finally:
                self._stacked = None

    def task_backward(self, task: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backpropagate one task's loss now (per-task form); :meth:`combine` finishes the step.

        Call it right after the task's forward pass, so that only one task's activations are
        alive at a time: the step then needs less peak memory than the plain summed loss.
        A task given again before :meth:`combine` adds to its gradient, as ``loss.backward()``
        adds to ``.grad``: over the micro-batches of gradient accumulation, the weighting then
        combines each task's gradient of the whole accumulated batch, once (if such a backward
        raises, the step is dropped). Not available with a loss weighting (it backpropagates
        the weighted loss once).

        Example:
            >>> import torch
            >>> from mtlkit import MultiTaskOptimizer
            >>> from mtlkit.weighting import PCGrad
            >>> body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
            >>> opt = MultiTaskOptimizer(
            ...     torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.1), PCGrad())
            >>> for task, x in {"a": torch.randn(4, 3), "b": torch.randn(4, 3)}.items():
            ...     opt.task_backward(task, head(body(x)).mean())
            >>> opt.combine().tasks
            ('a', 'b')
        """
        if not self.weighting.requires_gramian:
            raise TypeError(
                f"task_backward: expected a Gramian weighting, got the loss weighting "
                f"{type(self.weighting).__name__}; call backward(losses) instead"
            )
        names, tensors = as_named_losses({task: loss})
        try:
            self._steps.record(names[0], tensors[0], retain_graph, self._trainable, self._scale)
        except BaseException:
            if self._steps.pending is not None and not self._steps.pending.tasks:
                self._steps.abort()  # nothing recorded yet: leave no pending step behind
            raise

    def combine(self) -> SurgeryStats:
        """Combine the gradients recorded by :meth:`task_backward` and write them to ``.grad``.

        With ``sync`` active, this is where the ranks communicate (see the class docstring).

        Example:
            >>> import torch
            >>> from mtlkit import MultiTaskOptimizer
            >>> from mtlkit.weighting import PCGrad
            >>> lin = torch.nn.Linear(2, 1)
            >>> opt = MultiTaskOptimizer(torch.optim.SGD(lin.parameters(), lr=0.1), PCGrad())
            >>> opt.task_backward("only", lin(torch.ones(1, 2)).sum())
            >>> opt.combine().num_conflicts
            0
        """
        step = self._steps.take()
        if step is None:
            raise RuntimeError(
                f"{type(self).__name__}.combine(): no task_backward() since the last step"
            )
        grads = step.grads
        reached, had = self._sync.share_task_gradients(
            step.tasks, grads, step.reach_matrix(), step.had_grad, self.param_groups
        )
        reach = [sum(r[k] for r in reached) for k in range(len(grads.params))]
        shared = [True] * len(reach) if self._explicit is not None else [n >= 2 for n in reach]
        loss_ok = torch.stack(step.loss_ok)
        scale = None if self._scale is None else self._scale(torch.ones((), device=grads.device))
        outcome = self._combiner(grads, shared, step.tasks, loss_ok, step.accumulate, self._sync,
                                 scale)
        self._sync.share_combined(grads)
        step.publish(reach, had)
        if self._explicit is None:
            self._steps.auto_shared = {id(p) for p, s in zip(grads.params, shared, strict=True)
                                       if s}
        cosine, conflicts = cosine_and_conflicts(outcome.gramian)
        return self._record(SurgeryStats(
            tuple(step.tasks), cosine, conflicts, outcome.weights.float(), outcome.finite,
            self._sync.sent_bytes, outcome.nonfinite,
        ), outcome.nonfinite if outcome.bad_losses else ())

    # ----------------------------------------------------------------- internals
    def _stacked_backward(self, names: list[str], tensors: list[torch.Tensor],
                          retain_graph: bool) -> SurgeryStats:
        self._stacked_record(dict(zip(names, tensors, strict=True)), retain_graph)
        return self.combine()

    def _stacked_record(self, losses: Losses, retain_graph: bool = False) -> None:
        """Inside :meth:`stacked`: ONE backward split into the tasks' rows of the open step,
        added to what earlier calls recorded and not combined (:meth:`combine` finishes the
        step): gradient accumulation over micro-batches, as the Trainer does it.

        Raises:
            mtlkit.UnsplittableModel: the model cannot be split and nothing was recorded
                before (the step is dropped; a backward per task can redo it).
            RuntimeError: it cannot be split after earlier calls recorded rows (the step is
                dropped with them).
        """
        names, tensors = as_named_losses(losses)
        split = self._stacked
        if split is None or not self.weighting.requires_gramian:
            raise RuntimeError("_stacked_record: expected a stacked() block and a Gramian "
                               "weighting")
        if sorted(names) != sorted(split.names):
            raise ValueError(
                f"losses: expected the tasks of stacked()'s rows {split.names}, got {names}"
            )
        earlier = self._steps.pending is not None and bool(self._steps.pending.tasks)
        try:
            self._steps.record_stacked(names, tensors, split, self._scale, retain_graph,
                                       accumulate=True)
        except UnsplittableModel as exc:
            self._steps.abort()
            if earlier:
                raise RuntimeError(f"stacked(): the accumulated step is lost: {exc}") from exc
            raise
        except BaseException:
            self._steps.abort()
            raise

    def _record(self, stats: SurgeryStats, bad_losses: tuple[str, ...]) -> SurgeryStats:
        self._nonfinite = self._nonfinite or bad_losses  # step() raises until zero_grad()
        self.last_stats = stats
        if self.log_stats:
            logger.info("%s: %s", type(self.weighting).__name__, describe(stats))
        return stats

    def _trainable(self) -> list[torch.Tensor]:
        return unique_params(p for g in self.param_groups for p in g["params"] if p.requires_grad)
