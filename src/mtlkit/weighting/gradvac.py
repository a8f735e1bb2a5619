"""GradVac (Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models")."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import normalized, to_device
from mtlkit.weighting._seeded import Seeded
from mtlkit.weighting.pcgrad import visiting_orders

logger = logging.getLogger(__name__)


def _root(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0).sqrt()


class GradVac(Seeded, Weighting):
    r"""Gradient vaccine: raise each pair's cosine to its running target, not just above 0.

    PCGrad's generalisation (Wang et al., ICLR 2021, Algorithm 1): task ``i`` visits the others
    in a random order; when the cosine ``phi`` of its current gradient with ``g_j`` is below the
    target ``phi_hat_ij``, it adds ``|g_i| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2)) /
    (|g_j| sqrt(1-phi_hat^2)) g_j``, which brings the cosine to the target; the target then
    moves to ``(1 - beta) phi_hat + beta phi``. Targets start at 0. The weights are the
    coefficients of the summed corrected gradients; the tasks run side by side on the
    Gramian's device.

    Args:
        beta: Rate of the targets' moving average, in [0, 1]. Default 0.5, the default of
            LibMTL and torchjd.
        eps: Added to the denominators, on the trace-normalised Gramian.
        seed: Seed of the CPU generator of the visiting orders (``None``: nondeterministic).

    State: the targets (T x T) and the generator; :meth:`reset` clears both. A call with a
    different number of tasks restarts the targets (logged).

    Departures: one target per task pair for the whole model (the paper also keeps them per
    layer, which needs one Gramian per layer). torchjd's ``GradVac`` adds ``eps`` to
    denominators of the raw Gramian, which makes its result depend on the gradients' scale;
    here it is added on the trace-normalised one (equal results when ``eps`` is negligible).

    Example:
        >>> import torch
        >>> from mtlkit.weighting import GradVac
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> vac = GradVac(seed=0)
        >>> d = vac(J @ J.T) @ J                    # targets 0: PCGrad's projections
        >>> d
        tensor([0.5000, 1.5000], dtype=torch.float64)
        >>> vac.state_dict()["targets"]             # moved halfway towards cos = -0.71
        tensor([[ 0.0000, -0.3536],
                [-0.3536,  0.0000]], dtype=torch.float64)
    """

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, seed: int | None = None) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta <= 1:
            raise ValueError(f"GradVac: beta: expected a number in [0, 1], got {beta!r}")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
            raise ValueError(f"GradVac: eps: expected a number >= 0, got {eps!r}")
        self.beta, self.eps = float(beta), float(eps)
        self._seed(seed)
        self.targets: torch.Tensor | None = None

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        g = normalized(gramian)
        num_tasks = g.shape[0]
        if self.targets is None or self.targets.shape[0] != num_tasks:
            if self.targets is not None:
                logger.warning("GradVac: %d tasks after %d: targets restart at 0", num_tasks,
                               self.targets.shape[0])
            self.targets = torch.zeros_like(g)
        targets = self.targets.to(g.device)
        orders = to_device(visiting_orders(num_tasks, self.generator), g.device)
        rows = torch.arange(num_tasks, device=g.device) * num_tasks  # flat index of row i
        coeffs = torch.eye(num_tasks, dtype=g.dtype, device=g.device)
        norms = _root(g.diagonal())
        for step in range(num_tasks - 1):
            j = orders[:, step]
            cg = coeffs @ g  # row i: dot products of task i's current gradient with every g_k
            dot = cg.gather(1, j[:, None])[:, 0]
            norm_i = _root((cg * coeffs).sum(1))
            norm_j = norms.index_select(0, j)
            phi = dot / (norm_i * norm_j + self.eps)
            flat = rows + j
            target = targets.view(-1).gather(0, flat)
            root_target = _root(1 - target * target)
            add = norm_i * (target * _root(1 - phi * phi) - phi * root_target)
            add = add / (norm_j * root_target + self.eps)
            coeffs.view(-1).scatter_add_(0, flat, torch.where(phi < target, add, 0.0))
            targets.view(-1).scatter_(0, flat, (1 - self.beta) * target + self.beta * phi)
        self.targets = targets
        return coeffs.sum(0).to(gramian.dtype)

    _extra_keys = ("targets",)

    def reset(self) -> None:
        super().reset()
        self.targets = None

    def state_dict(self) -> dict[str, Any]:
        targets = None if self.targets is None else self.targets.clone()
        return {**super().state_dict(), "targets": targets}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        targets = state["targets"]
        self.targets = None if targets is None else targets.detach().clone().to(torch.float64)

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, eps={self.eps})"
