"""PCGrad's weighting (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient visits the other tasks in a random order and drops its projection onto
every ORIGINAL gradient it conflicts with. Every projection is onto an original gradient, so
each projected gradient is a linear combination of the originals whose coefficients depend on
the dot products alone: the method is a function of the Gramian.
"""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import to_device
from mtlkit.weighting._seeded import Seeded


def visiting_orders(num_tasks: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(T, T-1)`` CPU indices: row ``i`` is the order in which task ``i`` visits the others.

    Row ``i`` is a uniform permutation of the other tasks, drawn by one
    ``torch.randperm(T - 1, generator=generator)`` per task, in task order.

    Example:
        >>> visiting_orders(3, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """
    perms = [torch.randperm(num_tasks - 1, generator=generator) for _ in range(num_tasks)]
    positions = torch.stack(perms) if num_tasks > 1 else torch.zeros(1, 0, dtype=torch.long)
    return positions + (positions >= torch.arange(num_tasks)[:, None])  # skip the task itself


def pcgrad_weights(gramian: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The weights ``w`` such that the sum of PCGrad's projected gradients is ``w^T J``.

    Args:
        gramian: The T x T Gramian ``J J^T`` of the task gradients (any device).
        generator: The CPU generator that draws each task's visiting order (torch's default
            generator when ``None``).

    Returns:
        A float64 tensor of T weights (for ``reduction="sum"``) on the Gramian's device. The
        tasks' projections run side by side, one visit per step (``T - 1`` steps of a few
        tensor operations), with no host read: only the orders go from the host to the device.

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
    g = gramian.detach().to(torch.float64)
    num_tasks = g.shape[0]
    orders = to_device(visiting_orders(num_tasks, generator), g.device)
    rows = torch.arange(num_tasks, device=g.device) * num_tasks  # flat index of row i
    coeffs = torch.eye(num_tasks, dtype=torch.float64, device=g.device)  # projected = coeffs @ J
    diag = g.diagonal()
    for step in range(num_tasks - 1):
        visited = orders[:, step]
        dots = (coeffs * g.index_select(1, visited).T).sum(1)  # projected_i . g_visited(i)
        norm_sq = diag.index_select(0, visited)
        conflict = (dots < 0) & (norm_sq > 0)
        shift = torch.where(conflict, dots / torch.where(conflict, norm_sq, 1.0), 0.0)
        coeffs.view(-1).scatter_add_(0, rows + visited, -shift)
    return coeffs.sum(0)


class PCGrad(Seeded, Weighting):
    """PCGrad as a weighting: the weights whose combination is the sum of projected gradients.

    Args:
        seed: Seed of the dedicated CPU generator that draws each task's visiting order;
            ``None`` seeds it nondeterministically. Its state is the weighting's state.

    The optimizer wrapper with this weighting is :class:`mtlkit.PCGrad`. Departure from
    torchjd's ``PCGradWeighting``: the visiting orders come from this dedicated generator
    (torchjd draws them from torch's global one), and the projections run on the Gramian's
    device instead of the host; for a given order the results are equal.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import PCGrad
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> w = PCGrad(seed=0)(J @ J.T)
        >>> w @ J                                       # the sum of the projected gradients
        tensor([0.5000, 1.5000], dtype=torch.float64)
    """

    on_host = True
    """The visiting loop runs on the host: the optimizer hands it the host copy of the Gramian."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed(seed)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return pcgrad_weights(gramian, self.generator).to(gramian.dtype)
