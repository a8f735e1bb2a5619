"""What one combination saw: :class:`SurgeryStats`, and the cosines and conflicts of a Gramian."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SurgeryStats", "cosine_and_conflicts", "describe"]


@dataclass(frozen=True)
class SurgeryStats:
    """What one combination saw: are the task gradients in conflict at all?

    Attributes:
        tasks: Task names, in the order of the rows and columns below.
        cosine: T x T cosine similarities of the task gradients over the shared parameters
            (0 where a gradient has zero norm); ``None`` with a loss-based weighting, which
            forms no per-task gradient.
        num_conflicts: Number of task pairs whose gradients have a negative dot product
            (a gradient of zero norm conflicts with none); ``None`` with a loss-based weighting.
        weights: The combination weights ``w`` (combined gradient ``w @ J``), reduction applied;
            with a loss-based weighting, the derivative of the weighted loss by each task's loss.
        finite: False when a task's loss or shared gradient was not finite. A non-finite
            gradient: the plain sum was written, overflow included, so that a ``GradScaler``
            skips the step. A non-finite loss: the managed gradients were set to NaN (a
            ``GradScaler`` skips the step) and ``step()`` without a scaler raises.
        comm_bytes: Bytes this rank sent into collectives in this combination (0 without a
            process group or with ``sync="none"``); see :class:`~mtlkit.MultiTaskOptimizer`.
        nonfinite: The tasks whose loss or gradient was not finite (empty when ``finite``).

    Example:
        >>> import torch
        >>> from mtlkit import SurgeryStats
        >>> stats = SurgeryStats(("a", "b"), torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 1,
        ...                      torch.tensor([1.2, 1.2]), True)
        >>> stats.num_conflicts, stats.nonfinite
        (1, ())
    """

    tasks: tuple[str, ...]
    cosine: torch.Tensor | None
    num_conflicts: int | None
    weights: torch.Tensor
    finite: bool
    comm_bytes: int = 0
    nonfinite: tuple[str, ...] = ()


def cosine_and_conflicts(gramian: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The cosine matrix (float32) and the number of conflicting pairs of a host Gramian.

    Example:
        >>> cosine, conflicts = cosine_and_conflicts(torch.tensor([[1.0, -1.0], [-1.0, 4.0]]))
        >>> cosine[0, 1].item(), conflicts
        (-0.5, 1)
    """
    norms = gramian.diagonal().clamp_min(0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosine = torch.where(outer > 0, gramian / outer.clamp_min(1e-300), torch.zeros_like(gramian))
    upper = torch.triu(torch.ones_like(gramian, dtype=torch.bool), diagonal=1)
    conflicts = int(((gramian < 0) & (outer > 0) & upper).sum())
    return cosine.float(), conflicts


def describe(stats: SurgeryStats) -> str:
    """One log line: conflicts, weights and cosines.

    Example:
        >>> describe(SurgeryStats(("a", "b"), torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 1,
        ...                       torch.tensor([1.5, 1.25]), True))
        '1 conflicting pair(s) of 2 tasks; weights [1.5, 1.25]; cosines [[1.0, -0.5], [-0.5, 1.0]]'
    """
    cosines = None if stats.cosine is None else [
        [round(c, 3) for c in row] for row in stats.cosine.tolist()
    ]
    weights = [round(w, 4) for w in stats.weights.tolist()]
    return (f"{stats.num_conflicts} conflicting pair(s) of {len(stats.tasks)} tasks; "
            f"weights {weights}; cosines {cosines}")
