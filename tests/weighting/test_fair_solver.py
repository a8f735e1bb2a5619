"""The alpha-fair Newton solver (FairGrad, Nash-MTL): the accuracy that
``mtlkit.weighting._fair.newton_iterations`` promises, on random gradients whose norms differ by
up to e^(+-4) and whose cosine matrices range from well to badly conditioned."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import _fair
from mtlkit.weighting._linalg import unit_gramian


def gradients(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    num_tasks = 2 + seed % 9
    shared = torch.randn(1, 64, generator=gen, dtype=torch.float64)
    jac = torch.randn(num_tasks, 64, generator=gen, dtype=torch.float64)
    jac = jac + shared * float(torch.randn(1, generator=gen))
    jac = jac * torch.exp(2 * torch.randn(num_tasks, 1, generator=gen, dtype=torch.float64))
    if seed % 3 == 1:  # a strongly conflicting pair
        jac[1] = -0.95 * jac[0] * jac[1].norm() / jac[0].norm() + 0.3 * jac[1]
    if seed % 3 == 2:  # a nearly cancelling pair
        jac[1] = -jac[0] + 1e-2 * jac[1]
    return jac


def residual(gram: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    return float(((gram @ w) / w.pow(-1 / alpha) - 1).abs().max())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0, 5.0, 10.0])
def test_newton_reaches_rounding_level_unless_the_cosines_are_singular(alpha):
    worst = {"well": 0.0, "ill": 0.0}
    for seed in range(300 if alpha <= 2 else 60):
        jac = gradients(seed)
        gram = jac @ jac.T
        smallest = float(torch.linalg.eigvalsh(unit_gramian(gram)[0])[0])
        w = _fair.alpha_fair_weights(gram, alpha)
        assert (w > 0).all() and torch.isfinite(w).all()
        kind = "well" if smallest > 1e-5 else "ill"
        worst[kind] = max(worst[kind], residual(gram, w, alpha))
    assert worst["well"] < 1e-10
    if alpha <= 5:  # cosine eigenvalues down to 1e-9: rounding- and ridge-limited
        assert worst["ill"] < 1e-4


def test_fewer_iterations_would_not_do(monkeypatch):
    """The iteration count is not oversized for nothing: half of it misses on some problems."""
    monkeypatch.setattr(_fair, "NEWTON_ITERATIONS", _fair.NEWTON_ITERATIONS // 2)
    assert _fair.newton_iterations(2.0) == 8
    misses = 0
    for seed in range(60):
        jac = gradients(seed)
        gram = jac @ jac.T
        misses += residual(gram, _fair.alpha_fair_weights(gram, 2.0), 2.0) > 1e-6
    assert misses > 0


def test_orthogonal_gradients_are_solved_in_closed_form():
    gram = torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64))
    for alpha in (0.5, 1.0, 3.0):
        expected = gram.diagonal().pow(-alpha / (alpha + 1))  # g_i^2 w = w^(-1/alpha)
        torch.testing.assert_close(_fair.alpha_fair_weights(gram, alpha), expected)
