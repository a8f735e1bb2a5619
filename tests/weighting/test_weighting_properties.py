"""Hypothesis properties: what each method promises, on arbitrary gradients.

Non-conflict (UPGrad, DualProj, MGDA), permutation equivariance (every deterministic method),
invariance to a common positive scale, and each method's behaviour when one task's gradient
is scaled.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtlkit import weighting

DETERMINISTIC = ["upgrad", "dualproj", "mgda", "cagrad", "imtlg", "aligned_mtl", "config",
                 "fairgrad", "nash_mtl", "mean", "sum"]
SCALE_FREE = ["upgrad", "dualproj", "mgda", "cagrad", "imtlg", "aligned_mtl", "config", "mean",
              "sum"]  # weights unchanged when every gradient is scaled by the same factor

entries = st.floats(-10, 10, allow_nan=False, width=64)


@st.composite
def jacobians(draw, min_tasks=1, max_tasks=6):
    """Well-posed gradients: random rows, norms between 0.1 and 10 (degenerate ones have their
    own tests), a dimension that may be below the number of tasks."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    dim = draw(st.integers(1, 8))
    rows = draw(st.lists(st.lists(entries, min_size=dim, max_size=dim), min_size=num_tasks,
                         max_size=num_tasks))
    jac = torch.tensor(rows, dtype=torch.float64)
    norms = jac.norm(dim=1, keepdim=True)
    scales = torch.tensor(draw(st.lists(st.floats(0.1, 10), min_size=num_tasks,
                                        max_size=num_tasks)), dtype=torch.float64)[:, None]
    jac = torch.where(norms > 1e-3, jac / norms.clamp_min(1e-3), torch.zeros_like(jac)) * scales
    if (jac.norm(dim=1) == 0).any():
        jac[jac.norm(dim=1) == 0, 0] = 1.0
    return jac


@settings(max_examples=80, deadline=None)
@given(jacobians())
def test_upgrad_dualproj_and_mgda_never_conflict(jac):
    gram = jac @ jac.T
    for name in ("upgrad", "dualproj", "mgda"):
        w = weighting.by_name(name)(gram)
        d = w @ jac
        assert float((jac @ d).min()) >= -_ridge_slack(gram, w), name


def _ridge_slack(gram: torch.Tensor, w: torch.Tensor) -> float:
    """The non-conflict guarantee with the solver's ridge r <= 1e-9 tr(G) (added only to
    singular Gramians): ``(G w)_i >= -r w_i``, plus rounding."""
    return 2e-9 * float(gram.diagonal().sum()) * (1 + float(w.abs().max()))


def _close_updates(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6,
                   jac: torch.Tensor | None = None) -> None:
    """``a`` equals ``b`` up to ``rtol``; with ``jac``, also up to 1e-9 of its largest gradient:
    where the true update is 0 (gradients in full conflict) both are float64 residuals of the
    solver, whose size follows the gradients' scale, not the update's."""
    floor = 1e-12 if jac is None else 1e-9 * float(jac.norm(dim=1).max())
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.norm()) + floor)


# Weights are unique only for linearly independent gradients (else any null-space shift of w
# gives the same update), so the properties below compare the updates w @ J.


def _not_pareto_stationary(jac: torch.Tensor) -> bool:
    """Nash-MTL and FairGrad have no solution when 0 is in the gradients' convex hull (a ridge
    keeps the weights finite there: test_weighting_degenerate.py)."""
    d = weighting.MGDA()(jac @ jac.T) @ jac
    return float(d.norm()) > 1e-3 * float(jac.norm(dim=1).max())


def _well_conditioned(jac: torch.Tensor) -> bool:
    """IMTL-G and ConFIG pseudo-invert the cosine matrix: on (nearly) linearly dependent
    gradients their results are as ill-conditioned as that matrix (degenerate cases are in
    test_weighting_degenerate.py)."""
    units = jac / jac.norm(dim=1, keepdim=True)
    return bool(torch.linalg.eigvalsh(units @ units.T)[0] > 1e-2)


PINV_BASED = {"imtlg", "config"}


@settings(max_examples=60, deadline=None)
@given(jacobians(min_tasks=2), st.integers(0, 2**16), st.sampled_from(DETERMINISTIC))
def test_permutation_equivariance(jac, seed, name):
    assume(name not in PINV_BASED or _well_conditioned(jac))
    assume(name not in ("fairgrad", "nash_mtl") or _not_pareto_stationary(jac))
    perm = torch.randperm(jac.shape[0], generator=torch.Generator().manual_seed(seed))
    method = weighting.by_name(name)
    d = method(jac @ jac.T) @ jac
    d_perm = method(jac[perm] @ jac[perm].T) @ jac[perm]
    _close_updates(d_perm, d)


@settings(max_examples=60, deadline=None)
@given(jacobians(), st.floats(1e-3, 1e3), st.sampled_from(SCALE_FREE))
def test_common_scale_does_not_change_the_weights(jac, scale, name):
    """Gradients scaled by s: the weights are unchanged, so the update scales by s."""
    assume(name not in PINV_BASED or _well_conditioned(jac))
    method = weighting.by_name(name)
    d = method(jac @ jac.T) @ jac
    big = jac * scale
    _close_updates(method(big @ big.T) @ big, d * scale, jac=big)


@settings(max_examples=60, deadline=None)
@given(jacobians(), st.floats(1e-3, 1e3), st.sampled_from([0.5, 1.0, 2.0]))
def test_fair_weights_scale_as_s_to_the_minus_alpha_over_alpha_plus_one(jac, scale, alpha):
    """G -> s G turns the solution of G w = w^(-1/alpha) into s^(-alpha/(alpha+1)) w, so the
    update of s^(1/2) J is s^(1/2 - alpha/(alpha+1)) times the original one."""
    assume(_not_pareto_stationary(jac))
    method = weighting.FairGrad(alpha)
    d = method(jac @ jac.T) @ jac
    big = jac * scale**0.5
    _close_updates(method(big @ big.T) @ big, d * scale ** (0.5 - alpha / (alpha + 1)), 1e-5)


def _scale_task(jac: torch.Tensor, task: int, factor: float) -> torch.Tensor:
    out = jac.clone()
    out[task] *= factor
    return out


@settings(max_examples=60, deadline=None)
@given(jacobians(min_tasks=2), st.floats(0.01, 100))
def test_nash_mtl_update_ignores_the_scale_of_one_task(jac, factor):
    assume(_not_pareto_stationary(jac))
    scaled = _scale_task(jac, 0, factor)
    d = weighting.NashMTL()(jac @ jac.T) @ jac
    d_scaled = weighting.NashMTL()(scaled @ scaled.T) @ scaled
    _close_updates(d_scaled, d, 1e-5)


@settings(max_examples=60, deadline=None)
@given(jacobians(min_tasks=2), st.floats(0.01, 100), st.sampled_from(["imtlg", "config"]))
def test_unit_gradient_methods_keep_their_direction_when_one_task_is_scaled(jac, factor, name):
    """IMTL-G and ConFIG only see unit gradients: the update stays on its line (its sign
    follows the sign of the normalisation, sum of weights or of projections, which the
    scale of one task can flip)."""
    assume(_well_conditioned(jac))
    scaled = _scale_task(jac, 0, factor)
    method = weighting.by_name(name)
    d = method(jac @ jac.T) @ jac
    d_scaled = method(scaled @ scaled.T) @ scaled
    if float(d.norm()) < 1e-9 or float(d_scaled.norm()) < 1e-9:
        return  # no direction to compare (weights summing to 0)
    cosine = float(d @ d_scaled / (d.norm() * d_scaled.norm()))
    assert abs(cosine) > 1 - 1e-9


@settings(max_examples=60, deadline=None)
@given(jacobians(min_tasks=2), st.floats(0.01, 100))
def test_upgrad_stays_non_conflicting_and_the_mean_scales_linearly(jac, factor):
    scaled = _scale_task(jac, 0, factor)
    gram = scaled @ scaled.T
    w = weighting.UPGrad()(gram)
    assert float((scaled @ (w @ scaled)).min()) >= -_ridge_slack(gram, w)
    # the mean: scaling task 0 adds (factor - 1) g_0 / T
    mean = weighting.Mean()(gram) @ scaled
    torch.testing.assert_close(mean, jac.mean(0) + (factor - 1) * jac[0] / jac.shape[0])


@settings(max_examples=60, deadline=None)
@given(jacobians(min_tasks=2, max_tasks=2), st.floats(0.01, 100))
def test_pcgrad_scaling_one_task_scales_its_projection_only(jac, factor):
    """Projections onto g_0 do not depend on its length, so only g_0's own term scales."""
    scaled = _scale_task(jac, 0, factor)
    g0, g1 = jac[0], jac[1]
    dot = float(g0 @ g1)
    p0 = g0 - dot / float(g1 @ g1) * g1 if dot < 0 else g0
    p1 = g1 - dot / float(g0 @ g0) * g0 if dot < 0 else g1
    d_scaled = weighting.PCGrad(seed=0)(scaled @ scaled.T) @ scaled
    torch.testing.assert_close(d_scaled, factor * p0 + p1, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(jacobians(min_tasks=2), st.floats(0.1, 10))
def test_cagrad_stays_in_its_ball_whatever_the_scales(jac, factor):
    scaled = _scale_task(jac, 0, factor)
    c = 0.4
    d = weighting.CAGrad(c)(scaled @ scaled.T) @ scaled
    mean = scaled.mean(0)
    assert float((d - mean).norm()) <= c * float(mean.norm()) * (1 + 1e-7) + 1e-12


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_one_task_gives_the_tasks_own_gradient(name):
    g = torch.tensor([[0.0, 3.0, 4.0]], dtype=torch.float64)  # |g| = 5
    w = weighting.by_name(name)(g @ g.T)
    expected = {"cagrad": 1.4, "nash_mtl": 1 / 5, "fairgrad": 25 ** (-2 / 3)}.get(name, 1.0)
    torch.testing.assert_close(w, torch.tensor([expected], dtype=torch.float64))
