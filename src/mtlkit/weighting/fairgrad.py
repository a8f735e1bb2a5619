"""FairGrad (Ban and Ji 2024, "Fair Resource Allocation in Multi-Task Learning")."""

from __future__ import annotations

import math

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._fair import alpha_fair_weights


class FairGrad(Weighting):
    r"""alpha-fair resource allocation: weights with ``G w = w^(-1/alpha)``.

    The update ``d = w @ J`` maximises the alpha-fair utility ``sum_i (g_i^T d)^(1-alpha) /
    (1 - alpha)`` of the tasks' loss decreases within a ball; its weights solve
    ``(G w)_i = w_i^(-1/alpha)`` (Ban and Ji, ICML 2024, eq. 4). ``alpha = 1`` is proportional
    fairness (:class:`NashMTL`), larger ``alpha`` favours the worst-off task (towards
    max-min fairness), ``alpha = 0`` is the plain mean (linear scalarisation). Solved by
    damped Newton on the Gramian's device (:mod:`mtlkit.weighting._fair`); a zero gradient
    gets weight 0.

    Args:
        alpha: The fairness parameter, 0 or in [0.01, 10]. Default 2.0, the value of the
            authors' experiment scripts. The solver's iterations grow with alpha above 2
            (16 alpha, :func:`mtlkit.weighting._fair.newton_iterations`), hence the cap.

    Departure from the official code and torchjd's ``FairGrad`` (``scipy.optimize.
    least_squares`` from ``w = 1/T`` on the host): the same equation solved by Newton on the
    device; a zero gradient (where the equation has no solution and least squares drifts to
    a large weight) gets weight 0. The official code then clips ``||d||`` at 1 and multiplies
    it by T; neither is part of the method's weights.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import FairGrad
        >>> J = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> G = J @ J.T
        >>> w = FairGrad(alpha=2.0)(G)
        >>> torch.allclose(G @ w, w ** -0.5)
        True
    """

    def __init__(self, alpha: float = 2.0) -> None:
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not (alpha == 0 or 0.01 <= alpha <= 10)
            or not math.isfinite(alpha)
        ):
            raise ValueError(
                f"FairGrad: alpha: expected 0 or a number in [0.01, 10], got {alpha!r}"
            )
        self.alpha = float(alpha)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:
            num_tasks = gramian.shape[0]
            return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gramian.dtype,
                              device=gramian.device)
        return alpha_fair_weights(gramian, self.alpha).to(gramian.dtype)

    def __repr__(self) -> str:
        return f"FairGrad(alpha={self.alpha})"
