"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import normalized, ridged
from mtlkit.weighting._qp import ENUMERATE_MAX, _all_free_sets, pivoting_iterations, solve_on_free


def _support_solution(q_mat, b, radius, free):
    """For each free set: the ``(z, tau, violation)`` of CAGrad's conditions restricted to it.

    On a free set F the conditions ``Q_FF z_F = tau 1 - b_F`` and ``z^T Q z = r^2`` give
    ``z_F = tau p - h`` (``p = Q_FF^-1 1``, ``h = Q_FF^-1 b_F``) and a quadratic in ``tau``.
    """
    rhs = torch.stack([torch.ones_like(b), b], -1)
    ph = solve_on_free(q_mat, rhs.expand(*free.shape, 2), free)  # (..., T, 2)
    p, h = ph[..., 0], ph[..., 1]
    a, c, e = p.sum(-1), h.sum(-1), (b * h).sum(-1)
    disc = c * c - a * (e - radius * radius)
    tau = (c + disc.clamp_min(0).sqrt()) / a
    z = tau[..., None] * p - h
    mult = z @ q_mat + b - tau[..., None]  # the simplex multipliers, >= 0 off F
    violation = torch.where(free, -z, -mult).amax(-1)
    usable = (disc >= 0) & (a > 0) & torch.isfinite(violation)
    return z, tau, torch.where(usable, violation, torch.inf), mult


class CAGrad(Weighting):
    r"""Conflict-averse gradient: the best worst-task improvement near the mean gradient.

    CAGrad picks the update ``d`` that maximises ``min_i g_i^T d`` within the ball
    ``||d - g_0|| <= c ||g_0||`` around the mean gradient ``g_0`` (Liu et al., NeurIPS 2021,
    eq. 3). Its dual gives ``d = g_0 + (c ||g_0|| / ||g_w||) g_w`` with ``w`` minimising
    ``g_w^T g_0 + c ||g_0|| ||g_w||`` over the simplex, i.e. weights ``1/T + z`` where ``z =
    c ||g_0|| w / ||g_w||``. ``z`` solves ``Q z = tau 1 - b`` on its support, ``z^T Q z =
    (c ||g_0||)^2`` (a quadratic in ``tau``): the support is found exactly, by enumeration up to
    10 tasks and by block principal pivoting above (see :mod:`mtlkit.weighting._qp`).

    Args:
        c: Radius of the ball, relative to ``||g_0||`` (the paper's experiments use 0.4);
            ``c = 0`` gives the mean.

    Departures: the official code divides ``d`` by ``1 + c^2`` (its ``rescale=1``); like
    torchjd, this does not (multiply the weights by ``1 / (1 + c^2)`` to reproduce it).
    torchjd returns zero weights when ``||g_w||`` falls below 1e-4 of the normalised Gramian's
    scale or the Gramian's trace below 1e-4; here the weights stay ``1/T + z`` at any scale
    (the smallest safe ridge, :func:`mtlkit.weighting._linalg.ridged`, keeps a
    Pareto-stationary Gramian finite).

    Example:
        >>> import torch
        >>> from mtlkit.weighting import CAGrad
        >>> J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
        >>> d = CAGrad(c=0.4)(J @ J.T) @ J
        >>> mean = J.mean(0)
        >>> bool((d - mean).norm() <= 0.4 * mean.norm() + 1e-12)   # within the ball
        True
        >>> bool((J @ d).min() >= (J @ mean).min())                 # worst task improves
        True
    """

    def __init__(self, c: float = 0.4) -> None:
        if isinstance(c, bool) or not isinstance(c, int | float) or not c >= 0:
            raise ValueError(f"CAGrad: c: expected a number >= 0, got {c!r}")
        self.c = float(c)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        num_tasks = gramian.shape[0]
        q_mat = ridged(normalized(gramian))
        mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=q_mat.dtype, device=q_mat.device)
        if self.c == 0.0:
            return mean.to(gramian.dtype)
        b = q_mat @ mean  # g_i^T g_0
        radius = self.c * (mean @ b).clamp_min(0).sqrt()
        if num_tasks <= ENUMERATE_MAX:
            z, _, violation, _ = _support_solution(q_mat, b, radius, _all_free_sets(
                num_tasks, gramian.device))
            z = z.index_select(0, violation.argmin().reshape(1))[0]
        else:
            z = self._pivoting(q_mat, b, radius)
        return (mean + z.clamp_min(0)).to(gramian.dtype)

    @staticmethod
    def _pivoting(q_mat, b, radius):
        num_tasks = b.shape[0]
        index = torch.arange(1, num_tasks + 1, device=b.device)
        free = torch.ones(num_tasks, dtype=torch.bool, device=b.device)
        best = torch.full((), num_tasks + 1, device=b.device)
        z = torch.zeros_like(b)
        for _ in range(pivoting_iterations(num_tasks)):
            z, _, _, mult = _support_solution(q_mat, b, radius, free)
            violated = torch.where(free, z, mult) < -1e-12 * b.abs().amax()
            count = violated.sum()
            improving = count < best
            best = torch.minimum(best, count)
            largest = (index == (violated * index).argmax() + 1) & violated
            free = free ^ torch.where(improving, violated, largest)
        return z

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c})"
