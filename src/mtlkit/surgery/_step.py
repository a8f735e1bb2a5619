"""One step of per-task backwards, from the first ``task_backward`` to ``combine``, and the
recorder that opens, fills and closes such steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mtlkit.surgery._buffer import TaskGradients
from mtlkit.surgery._inputs import finite_flag
from mtlkit.surgery._reach import ReachRecorder
from mtlkit.surgery._rows import StackedRows, UnsplittableModel


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

    def row_of(self, name: str) -> tuple[int, bool]:
        """Task ``name``'s row and whether it is new (then appended, its row made, zeroed)."""
        if name in self.tasks:
            return self.tasks.index(name), False
        self.tasks.append(name)
        self.reached.append(set())
        self.loss_ok.append(torch.ones((), dtype=torch.bool, device=self.grads.device))
        self.grads.ensure_rows(len(self.tasks))
        return len(self.tasks) - 1, True

    def add_reach(self, row: int, reached: set[int], loss: torch.Tensor) -> None:
        self.reached[row] |= reached
        self.loss_ok[row] = self.loss_ok[row] & finite_flag(loss, self.grads.device)

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


class StepRecorder:
    """Per-task backwards into the task-gradient buffers: the layout, the hooks, the open step.

    Args:
        explicit: The explicit shared parameters, or ``None`` to detect them (then every
            trainable parameter is buffered, the last step's shared ones first).
    """

    def __init__(self, explicit: list[torch.Tensor] | None) -> None:
        self.explicit = explicit
        self.auto_shared: set[int] = set()
        """Ids of the parameters detected as shared in the latest step."""
        self.grads: TaskGradients | None = None
        self.pending: Step | None = None
        self._reach = ReachRecorder()

    def record(self, name: str, loss: torch.Tensor, retain_graph: bool,
               trainable: Callable[[], list[torch.Tensor]],
               scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Backpropagate one task's loss (times ``scale``) into its row of the open step; a
        task already in the step adds to its row (accumulation)."""
        if self.pending is None:
            self.pending = Step.begin(self._layout(trainable))
        step = self.pending
        row, new = step.row_of(name)
        try:
            step.grads.route_grads_to_row(row, zero=new)
            with self._reach.recording() as reached:
                if loss.requires_grad:
                    (loss if scale is None else scale(loss)).backward(retain_graph=retain_graph)
        except BaseException:
            if new:  # not recorded after all
                del step.tasks[row], step.reached[row], step.loss_ok[row]
            else:  # the row holds part of this backward: the step cannot be kept
                self.abort()
            raise
        step.add_reach(row, reached, loss)

    def record_stacked(self, names: list[str], losses: list[torch.Tensor], rows: StackedRows,
                       scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       retain_graph: bool = False, accumulate: bool = False) -> None:
        """One backward of the summed losses; ``rows`` splits it into the tasks' rows (added to
        those of the open step with ``accumulate``, else into a new step)."""
        params = self.explicit if self.explicit is not None else rows.params
        if not (accumulate and self.pending is not None):
            self.pending = Step.begin(self._grads_over(params))
        step = self.pending
        if step.grads.key != [id(p) for p in params]:
            raise RuntimeError("stacked(): expected the open step's parameters, got others (a "
                               "step mixing stacked() and per-task backwards)")
        placed = {name: step.row_of(name) for name in names}
        views = {name: step.grads.zeroed_row_views(row) if new else step.grads.row_views(row)
                 for name, (row, new) in placed.items()}
        scaled = [loss if scale is None else scale(loss) for loss in losses if loss.requires_grad]
        with rows.writing([views[n] for n in rows.names]) as split, \
                self._reach.recording() as outside:
            if scaled:
                sum(scaled[1:], scaled[0]).backward(retain_graph=retain_graph)
        if outside:
            raise UnsplittableModel(
                f"stacked(): expected every shared parameter's gradient to come from its "
                f"layer's rows, got {len(outside)} accumulated directly (a parameter used "
                "outside its own layer's forward); use backward() outside stacked()"
            )
        has_rows = {n: b > a for n, (a, b) in zip(rows.names, rows.bounds, strict=True)}
        for name, loss in zip(names, losses, strict=True):
            step.add_reach(placed[name][0], set(split) if has_rows[name] else set(), loss)

    def take(self) -> Step | None:
        """The open step, closed (``None`` when no task was recorded)."""
        step, self.pending = self.pending, None
        return step if step is not None and step.tasks else None

    def abort(self) -> None:
        """Close the open step and give the managed parameters their earlier gradients."""
        step, self.pending = self.pending, None
        if step is not None:
            step.abort()

    def _layout(self, trainable: Callable[[], list[torch.Tensor]]) -> TaskGradients:
        if self.explicit is not None:
            params = self.explicit
        else:
            # Shared parameters first: each group's Gramian is then one product over one block.
            params = sorted(trainable(), key=lambda p: id(p) not in self.auto_shared)
        return self._grads_over(params)

    def _grads_over(self, params: list[torch.Tensor]) -> TaskGradients:
        if self.grads is None or self.grads.key != [id(p) for p in params]:
            self.grads = TaskGradients(params)
            self._reach.watch(self.grads.params)
        return self.grads
