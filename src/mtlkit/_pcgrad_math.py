"""What one combination saw (:class:`SurgeryStats`); PCGrad's weights live in
:mod:`mtlkit.weighting.pcgrad`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlkit.weighting.pcgrad import pcgrad_weights

__all__ = ["SurgeryStats", "cosine_and_conflicts", "pcgrad_weights"]


@dataclass(frozen=True)
class SurgeryStats:
    """What one PCGrad combination saw: are the task gradients in conflict at all?

    Attributes:
        tasks: Task names, in the order of the rows and columns below.
        cosine: T x T cosine similarities of the task gradients over the shared parameters
            (0 where a gradient has zero norm).
        num_conflicts: Number of task pairs whose gradients have a negative dot product
            (a gradient of zero norm, or one whose squared norm underflows to 0, conflicts
            with none).
        weights: The combination weights ``w`` (combined gradient ``w^T J``), reduction applied.
        finite: False when a gradient was not finite; surgery was then skipped and the plain
            sum written, so that a ``GradScaler`` sees the overflow and skips the step.
        comm_bytes: Bytes this rank sent into collectives in this combination (0 without a
            process group or with ``sync="none"``); see :class:`PCGrad` for the volumes.

    Example:
        >>> import torch
        >>> from mtlkit import PCGrad, SurgeryStats, pcgrad_weights
        >>> stats = SurgeryStats(("a", "b"), torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 1,
        ...                      torch.tensor([1.2, 1.2]), True)
        >>> stats.num_conflicts
        1
    """

    tasks: tuple[str, ...]
    cosine: torch.Tensor
    num_conflicts: int
    weights: torch.Tensor
    finite: bool
    comm_bytes: int = 0


def cosine_and_conflicts(gramian: torch.Tensor) -> tuple[torch.Tensor, int]:
    norms = gramian.diagonal().clamp_min(0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosine = torch.where(outer > 0, gramian / outer.clamp_min(1e-300), torch.zeros_like(gramian))
    upper = torch.triu(torch.ones_like(gramian, dtype=torch.bool), diagonal=1)
    conflicts = int(((gramian < 0) & (outer > 0) & upper).sum())
    return cosine.float(), conflicts
