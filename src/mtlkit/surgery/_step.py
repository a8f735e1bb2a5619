"""One step of per-task backwards, from the first ``task_backward`` to ``combine``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mtlkit.surgery._buffer import TaskGradients


@dataclass
class Step:
    """The tasks backpropagated so far in this step and what their backwards reached."""

    grads: TaskGradients
    had_grad: list[bool]
    """Whether each managed parameter held a gradient before the step."""
    accumulate: bool
    """Whether the step adds onto earlier gradients (stashed in the combined buffers)."""
    tasks: list[str] = field(default_factory=list)
    reached: list[set[int]] = field(default_factory=list)
    loss_ok: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def begin(cls, grads: TaskGradients) -> Step:
        had_grad = [p.grad is not None for p in grads.params]
        return cls(grads, had_grad, grads.stash_existing_grads())

    def reach_matrix(self) -> list[list[bool]]:
        """``[t][k]``: task ``t`` reached ``grads.params[k]``."""
        return [[id(p) in r for p in self.grads.params] for r in self.reached]

    def abort(self) -> None:
        """Give every managed parameter back the gradient it had before the step."""
        self.grads.publish_combined()  # holds the stashed gradients when accumulating
        for p, had in zip(self.grads.params, self.had_grad, strict=True):
            if not had:
                p.grad = None

    def publish(self, reach: list[int], had: list[bool]) -> None:
        """Point ``.grad`` at the combination; a parameter no task reached keeps ``None``."""
        self.grads.publish_combined()
        for p, n, had_grad in zip(self.grads.params, reach, had, strict=True):
            if n == 0 and not had_grad:
                p.grad = None  # no task reached it: leave it as plain backward would
