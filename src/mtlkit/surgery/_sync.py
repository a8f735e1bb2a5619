"""The multi-task optimizer across processes: every collective of a step behind one object.

Three modes, active only when a process group is initialised and has more than one rank
(otherwise each method below returns at once and nothing is communicated):

``"tasks"`` (the exact algorithm)
    The T x P per-task gradients are averaged over ranks in one all-reduce before the Gramian,
    so every rank combines the global-batch task gradients and writes the same gradient.
    Parameters outside the buffers (task heads with explicit ``shared_params``) are averaged in
    one more, flat all-reduce. The combination weights (T numbers) are then broadcast from
    rank 0, so rounding differences between ranks can never flip a decision and let the
    replicas drift apart. With a loss-based weighting, the T losses are averaged first (the
    weighting sees the global-batch losses) and the gradients after the one backward.
``"aggregate"``
    Each rank combines its local task gradients, then one all-reduce of the combined gradient
    (P numbers instead of T x P). Cheaper, but the average of per-rank combinations is not the
    combination of the average: not the same algorithm.
``"none"``
    No communication: the caller synchronises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlkit.surgery._buffer import TaskGradients
from mtlkit.surgery._collectives import Collectives, Sync


def _heads_of(param_groups: Sequence[dict], managed: set[int]) -> list[torch.Tensor]:
    """The trainable parameters of the groups outside ``managed``, each once."""
    seen: set[int] = set()
    heads = []
    for p in (q for g in param_groups for q in g["params"]):
        if p.requires_grad and id(p) not in managed and id(p) not in seen:
            seen.add(id(p))
            heads.append(p)
    return heads


class SurgerySync:
    """What a step exchanges across ranks, in the order the step needs it.

    Args:
        mode: ``"tasks"``, ``"aggregate"`` or ``"none"``.
        process_group: The group to synchronise over (``None``: the default group).
    """

    def __init__(self, mode: Sync, process_group: object | None) -> None:
        self._comm = Collectives(mode, process_group)
        self.mode: Sync = mode
        self._heads: list[torch.Tensor] = []

    @property
    def sent_bytes(self) -> int:
        """Bytes this rank sent into collectives since the step began."""
        return self._comm.sent_bytes

    def _active(self) -> bool:
        return self._comm.world_size() > 1

    def share_task_gradients(
        self, tasks: list[str], grads: TaskGradients, reached: list[list[bool]],
        had: list[bool], param_groups: Sequence[dict],
    ) -> tuple[list[list[bool]], list[bool]]:
        """Begin a Gramian step: agree on the flags; ``"tasks"``: average rows and heads.

        Args:
            tasks: The step's task names, in order.
            grads: The step's task gradients.
            reached: ``reached[t][k]``: task ``t`` reached ``grads.params[k]`` on this rank.
            had: Whether each managed parameter held a gradient before the step.
            param_groups: The optimizer's groups (their other trainable parameters are heads).

        Returns:
            The global ``reached`` and ``had`` flags (this rank's own without a group).
        """
        self._comm.sent_bytes = 0
        self._heads = []
        if not self._active():
            return reached, had
        heads = _heads_of(param_groups, {id(p) for p in grads.params})
        n = len(grads.params)
        local = [v for r in reached for v in r] + had + [p.grad is not None for p in heads]
        layout = [grads.numel, n, len(heads), sum(p.numel() for p in heads)]
        flags = self._comm.agree(
            tasks, layout, torch.tensor(local, dtype=torch.bool, device=grads.device)
        )
        size = len(tasks) * n
        self._heads = [p for p, f in zip(heads, flags[size + n :], strict=True) if f]
        if self.mode == "tasks":
            for rows in grads.rows(len(tasks)):
                self._comm.mean_(rows)  # every rank now holds the global-batch task gradients
            self._comm.mean_grads_(self._heads)
        return [flags[i : i + n] for i in range(0, size, n)], flags[size : size + n]

    def share_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """``"tasks"``: rank 0's weights on every rank (``weights`` itself otherwise)."""
        if self.mode != "tasks" or not self._active():
            return weights
        return self._comm.broadcast_(weights.clone())

    def share_combined(self, grads: TaskGradients) -> None:
        """``"aggregate"``: average the combined gradients and the heads over ranks."""
        if self.mode != "aggregate" or not self._active():
            return
        # an earlier synced backward left equal values on every rank: averaging keeps them
        for combined in grads.combined():
            self._comm.mean_(combined)
        self._comm.mean_grads_(self._heads)

    # ------------------------------------------------------------------ loss-based weightings
    def global_losses(self, tasks: list[str], losses: torch.Tensor) -> torch.Tensor:
        """``"tasks"``: the losses valued at their mean over ranks, differentiable locally.

        The value is the global-batch loss (what the weighting must see); the derivative by
        the local losses is 1, so the local backward followed by averaging the gradients gives
        the weighting's gradient at the global losses.
        """
        self._comm.sent_bytes = 0
        if self.mode != "tasks" or not self._active():
            return losses
        local = losses.detach()
        self._comm.agree(tasks, [len(tasks)], torch.zeros(1, dtype=torch.bool,
                                                          device=local.device))
        mean = self._comm.mean_(local.clone())
        return losses + (mean - local)

    def share_loss_gradients(self, tasks: list[str], params: Sequence[torch.Tensor]) -> None:
        """After the one backward of a loss-based step: average the gradients (not ``"none"``)."""
        if not self._active() or not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.bool,
                           device=params[0].device)
        flags = self._comm.agree(tasks, [len(params), sum(p.numel() for p in params)], has)
        self._comm.mean_grads_([p for p, f in zip(params, flags, strict=True) if f])
