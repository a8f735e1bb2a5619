"""The alpha-fair weights: ``G w = w^(-1/alpha)`` (FairGrad; Nash-MTL is ``alpha = 1``).

The equation is the stationarity condition of the strictly convex
``phi(w) = 1/2 w^T G w - sum_i F(w_i)``, ``F'(w) = w^(-1/alpha)``, minimised over ``w > 0`` by
damped Newton. Two changes of variables make it well scaled: ``G = D C D`` (``C`` the cosine
matrix, ``D`` the norms) and ``w = D^-1 y``, which leaves ``C y = c * y^(-1/alpha)`` with
``c_i = |g_i|^((1-alpha)/alpha)`` (all 1 for Nash-MTL, whose update does not depend on the
tasks' scales). Each Newton step is searched along :data:`STEPS` (fraction of the step,
capped to keep ``y > 0``) and the candidate with the lowest ``phi`` is kept, so ``phi`` never
increases; the iteration count is fixed (:data:`NEWTON_ITERATIONS`).
"""

from __future__ import annotations

import torch

from mtlkit.weighting._linalg import cholesky_solve, constant, scaled_gramian

NEWTON_ITERATIONS = 12
"""Newton iterations. From the diagonal solution rescaled along its ray, the relative residual
``max_i |(C y)_i / (c_i y_i^(-1/alpha)) - 1|`` is below 1e-9 after 4 to 8 of them when the
cosine matrix's smallest eigenvalue is above 1e-3, and stops near rounding level (1e-7) when
nearly cancelling gradients push it to 1e-8 (``tests/weighting/test_fair_solver.py``)."""

STEPS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0)
"""Fractions of the Newton step tried at each iteration (0 keeps the current point, so a failed
step can never make ``phi`` worse or non-finite)."""


def _potential(y: torch.Tensor, c: torch.Tensor, c_mat: torch.Tensor, alpha: float):
    quadratic = 0.5 * ((y @ c_mat) * y).sum(-1)
    if alpha == 1.0:
        return quadratic - (c * y.log()).sum(-1)
    power = 1.0 - 1.0 / alpha
    return quadratic - (c * y.pow(power)).sum(-1) / power


def alpha_fair_weights(gramian: torch.Tensor, alpha: float) -> torch.Tensor:
    """The float64 weights ``w > 0`` with ``(G w)_i = w_i^(-1/alpha)``; 0 for a zero gradient.

    Example:
        >>> g = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> alpha_fair_weights(g, 1.0)                 # 1 / |g_i| for orthogonal gradients
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    # a zero gradient is decoupled (y_i = 1, weight 0); the ridge keeps cancelling ones finite
    c_mat, safe_norms, nonzero = scaled_gramian(gramian)
    log_c = (1.0 - alpha) / alpha * safe_norms.log()
    log_cmax = log_c.amax()
    c = (log_c - log_cmax).exp()
    y = c.pow(alpha / (alpha + 1.0))  # exact for orthogonal gradients, then rescaled on its ray
    y = y * ((c * y.pow(1.0 - 1.0 / alpha)).sum() / (y @ c_mat @ y)).pow(alpha / (alpha + 1.0))
    steps = constant(STEPS, y.dtype, y.device)
    for _ in range(NEWTON_ITERATIONS):
        pull = c * y.pow(-1.0 / alpha)
        grad = c_mat @ y - pull
        hessian = c_mat + torch.diag(pull / (alpha * y))
        step = -cholesky_solve(torch.linalg.cholesky_ex(hessian).L, grad[:, None])[:, 0]
        limit = torch.where(step < 0, -y / step.clamp_max(-1e-300), torch.inf).amin()
        candidates = y + torch.minimum(steps, 0.99 * limit)[:, None] * step
        potential = _potential(candidates, c, c_mat, alpha)
        potential = torch.where(torch.isfinite(potential), potential, torch.inf)
        # the longest step whose potential is the lowest up to rounding: comparing potentials
        # alone would stall near the solution, where they differ by less than rounding
        lowest = potential.amin()
        near = potential <= lowest + 1e-12 * (lowest.abs() + 1)
        y = candidates.index_select(0, near.to(torch.int8).argmax()[None])[0]
    y = y * (log_cmax * alpha / (alpha + 1.0)).exp()
    trace = gramian.detach().to(torch.float64).diagonal().sum().clamp_min(1e-300)
    w = torch.where(nonzero, y / safe_norms, 0.0)
    return w * trace.pow(-alpha / (alpha + 1.0))
