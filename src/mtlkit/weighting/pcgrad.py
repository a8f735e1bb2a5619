"""PCGrad's weighting (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient visits the other tasks in a random order and drops its projection onto
every ORIGINAL gradient it conflicts with. Every projection is onto an original gradient, so
each projected gradient is a linear combination of the originals whose coefficients depend on
the dot products alone: the method is a function of the Gramian.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mtlkit.weighting._base import Weighting


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


class PCGrad(Weighting):
    """PCGrad as a weighting: the weights whose combination is the sum of projected gradients.

    Args:
        seed: Seed of the dedicated CPU generator that draws each task's visiting order;
            ``None`` seeds it nondeterministically. Its state is the weighting's state.

    The optimizer wrapper with this weighting is :class:`mtlkit.PCGrad`.

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
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._initial = self.generator.get_state()

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        w = pcgrad_weights(gramian, self.generator)
        return w.to(gramian.device)

    def reset(self) -> None:
        self.generator.set_state(self._initial)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
