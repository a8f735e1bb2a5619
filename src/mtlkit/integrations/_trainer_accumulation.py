"""Per-task gradients summed over the micro-batches of an optimizer step, for a gradient
weighting: the weighting then combines the task gradients of the whole accumulated batch.

``MultiTaskOptimizer.task_backward`` takes each task once per step, so with ``k > 1``
micro-batches every micro-batch's task gradients are summed here (one sum per task and
parameter: ``T x P`` numbers more during accumulation) and handed over after the last one
through a linear surrogate: the gradient of ``sum_p (p * g_p).sum()`` is exactly ``g``. The
optimizer then sees, per task, the gradient of the task's loss summed over the step's
micro-batches, as from one big batch, in the order the tasks were first drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


class TaskGradientSums:
    """The task gradients of an optimizer step's micro-batches, summed per task."""

    def __init__(self) -> None:
        self._sums: dict[str, list[Tensor | None]] = {}
        self._params: list[Tensor] = []

    def __contains__(self, task: str) -> bool:
        return task in self._sums

    @property
    def tasks(self) -> list[str]:
        """The tasks with a stored sum, in the order they first came."""
        return list(self._sums)

    def add(self, task: str, loss: Tensor, params: Sequence[Tensor],
            scaler: torch.amp.GradScaler | None = None, retain_graph: bool = False) -> None:
        """Backpropagate ``loss`` alone and add its gradient to ``task``'s sum.

        ``.grad`` is left as it was (``None``: nothing else accumulates during these
        micro-batches). Under a ``GradScaler`` the backward runs on the scaled loss, the sum
        holds the unscaled gradient (an overflow stays infinite, for the scaler to see).
        """
        self._use(params)
        if loss.requires_grad:
            (loss if scaler is None else scaler.scale(loss)).backward(retain_graph=retain_graph)
        self._add(task, self._take_grads(), scaler, views=False)

    def add_split(self, grads: Mapping[str, Sequence[Tensor | None]], managed: Sequence[Tensor],
                  params: Sequence[Tensor], scaler: torch.amp.GradScaler | None = None) -> None:
        """Add the task gradients of one stacked backward, split by rows, to the sums.

        ``grads[task]`` is the task's (scaled, under a ``GradScaler``) gradient of each of the
        ``managed`` parameters, or ``None`` where it did not reach it; every other parameter of
        ``params`` holds the backward's summed gradient in ``.grad``, taken here and added to
        the first task's sum: those parameters are not combined (the split manages every
        shared one), so only their total over the tasks reaches the optimizer.
        """
        self._use(params, clear=False)
        index = {id(p): k for k, p in enumerate(managed)}
        rest = self._take_grads()
        for n, (task, task_grads) in enumerate(grads.items()):
            own = [task_grads[index[id(p)]] if id(p) in index else rest[k] if n == 0 else None
                   for k, p in enumerate(self._params)]
            self._add(task, own, scaler, views=True)

    def _use(self, params: Sequence[Tensor], clear: bool = True) -> None:
        if self._params and [id(p) for p in params] != [id(p) for p in self._params]:
            raise RuntimeError("the optimizer's parameters changed during gradient accumulation")
        self._params = list(params)
        if clear:
            for p in self._params:
                p.grad = None

    def _take_grads(self) -> list[Tensor | None]:
        grads = [p.grad for p in self._params]
        for p in self._params:
            p.grad = None
        return grads

    def _add(self, task: str, grads: Sequence[Tensor | None],
             scaler: torch.amp.GradScaler | None, views: bool) -> None:
        """Add ``grads`` (aligned with the parameters) to ``task``'s sums; ``views``: they are
        views into a buffer the next backward overwrites (copied, never kept)."""
        inverse = None if scaler is None else 1.0 / scaler.get_scale()
        sums = self._sums.setdefault(task, [None] * len(self._params))
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if sums[i] is None:
                sums[i] = (grad.clone() if views else grad) if inverse is None else grad * inverse
            elif inverse is None:
                sums[i].add_(grad)
            else:
                sums[i].add_(grad, alpha=inverse)

    def surrogate(self, task: str) -> Tensor | None:
        """A loss whose gradient is ``task``'s stored sum (``None`` when nothing is stored).

        Only the parameters the task reached get a term, so the optimizer sees the task reach
        the same parameters as its backward passes did.
        """
        sums = self._sums.get(task)
        if sums is None:
            return None
        terms = [(p * g).sum() for p, g in zip(self._params, sums, strict=True) if g is not None]
        return torch.stack(terms).sum() if terms else None

    def clear(self) -> None:
        self._sums = {}
