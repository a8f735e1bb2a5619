"""PCGrad's combination as a pure function of the Gramian, and what one combination saw."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def pcgrad_weights(gramian: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The weights ``w`` such that the sum of PCGrad's projected gradients is ``w^T J``.

    Args:
        gramian: The T x T Gramian ``J J^T`` of the task gradients (any device; it is read once).
        generator: The CPU generator that draws each task's visiting order (torch's default
            generator when ``None``).

    Returns:
        A float64 CPU tensor of T weights (for ``reduction="sum"``).

    A task whose gradient has zero norm is never projected on (its direction is undefined), so
    no weight is ever NaN or infinite for a finite Gramian.

    Example:
        >>> import torch
        >>> from mtlkit import PCGrad, SurgeryStats, pcgrad_weights
        >>> g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])      # conflicting gradients
        >>> w = pcgrad_weights(g @ g.T)
        >>> w @ g.double()                                  # sum of the projected gradients
        tensor([0.5000, 1.5000], dtype=torch.float64)
    """
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(
            f"gramian: expected a square T x T matrix, got shape {tuple(gramian.shape)}"
        )
    g = gramian.detach().to("cpu", torch.float64).tolist()
    num_tasks = len(g)
    total = [0.0] * num_tasks
    for i in range(num_tasks):
        coeffs = [0.0] * num_tasks
        coeffs[i] = 1.0
        others = [j for j in range(num_tasks) if j != i]
        for k in torch.randperm(len(others), generator=generator).tolist():
            j = others[k]
            norm_sq = g[j][j]
            if not norm_sq > 0.0:
                continue
            dot = math.fsum(coeffs[m] * g[m][j] for m in range(num_tasks))
            if dot < 0.0:
                coeffs[j] -= dot / norm_sq
        for m in range(num_tasks):
            total[m] += coeffs[m]
    return torch.tensor(total, dtype=torch.float64)


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
