"""Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._fair import alpha_fair_weights


class NashMTL(Weighting):
    r"""The Nash bargaining solution: weights with ``(G w)_i = 1 / w_i``.

    The update ``d = w @ J`` maximises ``sum_i log(g_i^T d)`` within a ball; its weights solve
    ``(G w)_i = 1 / w_i`` for every task (Navon et al., ICML 2022, eq. 3), so every task gets
    ``g_i^T d = 1 / w_i > 0`` and ``||d||^2 = T``. The update does not change when one task's
    gradient is scaled. The equation is solved by damped Newton on the Gramian's device
    (:mod:`mtlkit.weighting._fair`); a zero gradient gets weight 0.

    Args:
        max_norm: If given, ``w`` is scaled down so that ``||w @ J|| <= max_norm``. The paper's
            update is unclipped (``None``); the official code and torchjd clip at 1.0, which
            (as ``||d|| = sqrt(T)`` exactly) scales every solution by ``1 / sqrt(T)``.

    Departures: the official code and torchjd's ``NashMTL`` approximate eq. 3 by the paper's
    sequence of convex programs (cvxpy/ECOS, at most 20, stopping when the residual falls
    below 1e-3), warm-started from the previous step, optionally only every few steps; here
    eq. 3 is solved to rounding level at every call, from scratch, so the weighting is
    stateless. Exactly cancelling gradients (0 in their convex hull) have no solution; a ridge
    (the smallest that keeps the cosine matrix positive definite) keeps the weights finite.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import NashMTL
        >>> J = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> G = J @ J.T
        >>> w = NashMTL()(G)
        >>> torch.allclose(G @ w, 1 / w)
        True
    """

    def __init__(self, max_norm: float | None = None) -> None:
        if max_norm is not None and (
            isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0
        ):
            raise ValueError(f"NashMTL: max_norm: expected None or a number > 0, got {max_norm!r}")
        self.max_norm = None if max_norm is None else float(max_norm)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        w = alpha_fair_weights(gramian, 1.0)
        if self.max_norm is not None:
            norm = (w @ gramian.detach().to(w.dtype) @ w).clamp_min(0).sqrt()
            w = w * torch.where(norm > self.max_norm, self.max_norm / norm, 1.0)
        return w.to(gramian.dtype)

    def __repr__(self) -> str:
        return f"NashMTL(max_norm={self.max_norm})"
