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

from collections.abc import Sequence

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
        if self._params and [id(p) for p in params] != [id(p) for p in self._params]:
            raise RuntimeError("the optimizer's parameters changed during gradient accumulation")
        self._params = list(params)
        for p in self._params:
            p.grad = None
        if loss.requires_grad:
            (loss if scaler is None else scaler.scale(loss)).backward(retain_graph=retain_graph)
        inverse = None if scaler is None else 1.0 / scaler.get_scale()
        sums = self._sums.setdefault(task, [None] * len(self._params))
        for i, p in enumerate(self._params):
            grad, p.grad = p.grad, None
            if grad is None:
                continue
            if inverse is not None:
                grad = grad * inverse
            sums[i] = grad if sums[i] is None else sums[i].add_(grad)

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
