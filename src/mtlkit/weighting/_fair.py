"""The alpha-fair weights: ``G w = w^(-1/alpha)`` (FairGrad; Nash-MTL is ``alpha = 1``).

Two changes of variables make the equation well scaled: ``G = D C D`` (``C`` the cosine matrix,
``D`` the norms) and ``w = D^-1 y``, which leaves ``C y = c * y^(-1/alpha)`` with
``c_i = |g_i|^((1-alpha)/alpha)`` (all 1 for Nash-MTL, whose update does not depend on the
tasks' scales). It is solved as the primal-dual pair ``s = C y``, ``log y + alpha log s =
alpha log c`` (``y, s > 0``, the projections ``s_i = u_i^T d``) by infeasible Newton steps,
each shortened to keep 1% of the way to the boundary of ``y, s > 0``, as an interior-point
method's centring steps are; each step is one Cholesky solve of ``C + diag(s / (alpha y))``.
The start, ``y = s = c^(alpha/(alpha+1))``, is the solution for orthogonal gradients. The
iteration count is fixed for a given alpha (:func:`newton_iterations`).
"""

from __future__ import annotations

import math

import torch

from mtlkit.weighting._linalg import cholesky_solve, scaled_gramian

NEWTON_ITERATIONS = 16
"""Newton iterations for 1 <= alpha <= 2 (Nash-MTL, FairGrad's default); see
:func:`newton_iterations`."""


def newton_iterations(alpha: float) -> int:
    """The fixed iteration count: :data:`NEWTON_ITERATIONS` for 1 <= alpha <= 2, 1.5 times it
    below 1, ``NEWTON_ITERATIONS * alpha`` above 2 (the steps to the boundary shorten as alpha
    grows).

    On random problems with norms spread by e^(+-4), strongly conflicting or nearly
    cancelling pairs (300 for alpha <= 2, 60 above; ``tests/weighting/test_fair_solver.py``),
    the relative residual ``max_i |(G w)_i / w_i^(-1/alpha) - 1|`` ends below 1e-10 for alpha
    in {0.5, 1, 2, 3, 5, 10} whenever the cosine matrix's smallest eigenvalue is above 1e-5.
    Below (nearly cancelling gradients; exactly cancelling ones have no solution) rounding and
    the ridge limit it to about 1e-5 for alpha <= 5; for alpha = 10 such problems are not
    solved within the count (the weights stay finite and positive).

    Example:
        >>> newton_iterations(1.0), newton_iterations(0.5), newton_iterations(5.0)
        (16, 24, 80)
    """
    if alpha < 1:
        return NEWTON_ITERATIONS * 3 // 2
    return NEWTON_ITERATIONS if alpha <= 2 else math.ceil(NEWTON_ITERATIONS * alpha)


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
    log_c = log_c - log_cmax  # c <= 1: y's scale is restored at the end
    y = (log_c * (alpha / (alpha + 1.0))).exp()
    s = y.clone()
    for _ in range(newton_iterations(alpha)):
        # linearise s = C y and log y + alpha log s = alpha log c; eliminate ds = C(y + dy) - s
        gap = alpha * log_c - y.log() - alpha * s.log()
        rhs = s / alpha * gap - (c_mat @ y - s)
        system = c_mat + torch.diag(s / (alpha * y))
        dy = cholesky_solve(torch.linalg.cholesky_ex(system).L, rhs[:, None])[:, 0]
        ds = c_mat @ (y + dy) - s
        to_edge = torch.cat([torch.where(dy < 0, -y / dy, torch.inf),
                             torch.where(ds < 0, -s / ds, torch.inf)]).amin()
        step = (0.99 * to_edge).clamp(max=1.0)
        y = y + step * dy
        s = s + step * ds
    y = y * (log_cmax * alpha / (alpha + 1.0)).exp()
    trace = gramian.detach().to(torch.float64).diagonal().sum().clamp_min(1e-300)
    w = torch.where(nonzero, y / safe_norms, 0.0)
    return w * trace.pow(-alpha / (alpha + 1.0))
