"""Each Gramian weighting against an independent reference: a naive NumPy/SciPy version of the
paper's formula (``weighting_refs``) and torchjd's aggregator on the same Jacobian.

torchjd's solvers are approximate (Frank-Wolfe for MGDA, cvxpy for CAGrad and Nash-MTL): each
comparison's tolerance is that solver's, stated where it is used.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchjd.aggregation as tjd
import weighting_refs as ref

from mtlkit import pcgrad_weights, weighting

CASES = [(t, seed) for t in (1, 2, 3, 4, 6, 9) for seed in range(3)]


def jac_case(num_tasks: int, seed: int) -> torch.Tensor:
    return ref.random_jacobian(torch.Generator().manual_seed(1000 * num_tasks + seed), num_tasks)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture(autouse=True)
def _quiet_solvers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------ projections onto the dual cone


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_upgrad_and_dualproj_equal_brute_force_qps(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    for method, naive in ((weighting.UPGrad(), ref.upgrad), (weighting.DualProj(), ref.dualproj)):
        expected = torch.from_numpy(naive(gram.numpy()))
        assert rel_diff(method(gram) @ jac, expected @ jac) < 1e-9, method


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_upgrad_and_dualproj_equal_torchjd_with_its_ridge(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    assert rel_diff(weighting.UPGrad(reg_eps=1e-4)(gram) @ jac, tjd.UPGrad()(jac)) < 1e-8
    assert rel_diff(weighting.DualProj(reg_eps=1e-4)(gram) @ jac, tjd.DualProj()(jac)) < 1e-8


def test_upgrad_default_differs_from_torchjd_by_its_ridge_only():
    """The intended departure: with gradients of similar norms, torchjd's 1e-4 ridge moves the
    result by about 1e-4 (much more for a small task: next test)."""
    jac = jac_case(4, 0)
    jac = jac / jac.norm(dim=1, keepdim=True)
    gram = jac @ jac.T
    diff = rel_diff(weighting.UPGrad()(gram) @ jac, tjd.UPGrad()(jac))
    assert 1e-7 < diff < 1e-2


def test_torchjd_upgrad_conflicts_with_a_small_task_and_ours_does_not():
    # task 1's gradient is 1000x smaller and conflicts with task 0
    jac = torch.tensor([[1.0, 0.0, 0.2], [-1e-3, 1e-3, 0.0]], dtype=torch.float64)
    cosine = lambda d: float(jac[1] @ d / (jac[1].norm() * d.norm()))  # noqa: E731
    theirs = tjd.UPGrad()(jac)
    ours = weighting.UPGrad()(jac @ jac.T) @ jac
    assert cosine(theirs) < -0.05  # torchjd's ridge swamps task 1's constraint
    assert (jac @ ours).min() >= -1e-12 * ours.norm()


def test_torchjd_upgrad_becomes_the_mean_below_its_trace_cutoff():
    jac = jac_case(3, 1)
    jac = jac / jac.norm(dim=1, keepdim=True)
    small = jac * 1e-3  # trace of the Gramian 3e-6, below torchjd's norm_eps = 1e-4
    assert rel_diff(tjd.UPGrad()(small), small.mean(0)) < 1e-9
    ours = weighting.UPGrad(reg_eps=1e-4)
    torch.testing.assert_close(ours(small @ small.T), ours(jac @ jac.T), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------ minimum norm, conflict-averse


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_mgda_is_the_min_norm_point_by_brute_force(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    w = weighting.MGDA()(gram)
    expected = torch.from_numpy(ref.min_norm_simplex(gram.numpy()))
    assert rel_diff(w @ jac, expected @ jac) < 1e-9
    assert abs(float(w.sum()) - 1) < 1e-12 and (w >= 0).all()


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_mgda_against_torchjd_frank_wolfe(num_tasks, seed):
    """Frank-Wolfe stops at a step below epsilon (1e-3 by default): its objective can only be
    above ours, and run to a tight epsilon it comes within 1e-2 of our point."""
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    ours = weighting.MGDA()(gram) @ jac
    default = tjd.MGDA()(jac)
    tight = tjd.MGDA(epsilon=1e-10, max_iters=20000)(jac)
    assert float(ours @ ours) <= float(default @ default) * (1 + 1e-9)
    assert float(ours @ ours) <= float(tight @ tight) * (1 + 1e-9)
    assert rel_diff(ours, tight) < 1e-2


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_cagrad_equals_scipy_on_the_papers_dual(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    expected = torch.from_numpy(ref.cagrad(gram.numpy(), 0.4))
    assert rel_diff(weighting.CAGrad(0.4)(gram) @ jac, expected @ jac) < 1e-5  # SLSQP's accuracy


@pytest.mark.parametrize(("num_tasks", "seed"), [c for c in CASES if c[0] > 1])
def test_cagrad_against_torchjd(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    ours = weighting.CAGrad(0.4)(jac @ jac.T) @ jac
    assert rel_diff(ours, tjd.CAGrad(c=0.4)(jac)) < 1e-3  # cvxpy/Clarabel's tolerance


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_update_maximises_the_worst_task_in_the_ball(seed):
    """The primal (Liu et al. 2021, eq. 3): no point of the ball does better on the worst task."""
    jac = jac_case(4, seed)
    c = 0.5
    d = weighting.CAGrad(c)(jac @ jac.T) @ jac
    mean = jac.mean(0)
    radius = c * float(mean.norm())
    assert float((d - mean).norm()) <= radius * (1 + 1e-9)
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(20000, jac.shape[1], generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True) * radius * torch.rand(20000, 1, generator=gen,
                                                                         dtype=torch.float64)
    others = (mean + dirs) @ jac.T
    assert float((jac @ d).min()) >= float(others.min(1).values.max()) - 1e-9


def test_cagrad_c_zero_is_the_mean_and_t1_is_one_plus_c():
    jac = jac_case(3, 0)
    torch.testing.assert_close(weighting.CAGrad(0.0)(jac @ jac.T), torch.full((3,), 1 / 3,
                                                                            dtype=torch.float64))
    g = torch.tensor([[4.0]], dtype=torch.float64)
    torch.testing.assert_close(weighting.CAGrad(0.4)(g), torch.tensor([1.4], dtype=torch.float64))


# ------------------------------------------------------------ equal projections, alignment


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_imtlg_equalises_projections_and_equals_torchjd(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    w = weighting.IMTLG()(jac @ jac.T)
    proj = ref.imtlg_projections(jac.numpy(), (w @ jac).numpy())
    assert np.ptp(proj) < 1e-9 * abs(proj).max()
    assert abs(float(w.sum()) - 1) < 1e-12
    assert rel_diff(w @ jac, tjd.IMTLG()(jac)) < 1e-9


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_aligned_mtl_equals_the_numpy_formula_and_torchjd(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    w = weighting.AlignedMTL()(gram)
    torch.testing.assert_close(w, torch.from_numpy(ref.aligned_mtl(gram.numpy())), rtol=1e-9,
                               atol=1e-12)
    assert rel_diff(w @ jac, tjd.AlignedMTL()(jac)) < 1e-9


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_config_equals_the_jacobian_formula_and_torchjd(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    ours = weighting.ConFIG()(jac @ jac.T) @ jac
    expected = torch.from_numpy(ref.config_update(jac.numpy()))
    assert rel_diff(ours, expected) < 1e-9
    assert rel_diff(ours, tjd.ConFIG()(jac)) < 1e-9
    cosines = (jac @ ours) / (jac.norm(dim=1) * ours.norm())
    assert float(cosines.max() - cosines.min()) < 1e-9  # one angle with every gradient


@pytest.mark.parametrize("cosine", [0.9, 0.99, 0.999])
def test_imtlg_and_config_are_accurate_on_a_float32_gramian(cosine):
    """Two gradients at a cosine near 1 make the cosine matrix's smallest eigenvalue small
    (0.0009 at 0.999), far above float32's rounding noise: a float32 Gramian must still give
    the paper's weights (IMTL-G's closed form, Liu et al. 2021, written out in NumPy)."""
    e = np.eye(8)
    jac = np.stack([e[0], 2 * (cosine * e[0] + math.sqrt(1 - cosine**2) * e[1]),
                    0.5 * (0.3 * e[0] + 0.2 * e[1] - 0.5 * e[2])])
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    u_diff, g_diff = units[0] - units[1:], jac[0] - jac[1:]
    alpha = jac[0] @ u_diff.T @ np.linalg.inv(g_diff @ u_diff.T)
    imtl_expected = torch.from_numpy(np.concatenate([[1 - alpha.sum()], alpha]) @ jac)
    config_expected = torch.from_numpy(ref.config_update(jac))
    jac32 = torch.from_numpy(jac).float()
    gram32 = jac32 @ jac32.T
    assert rel_diff(weighting.IMTLG()(gram32).double() @ jac, imtl_expected) < 1e-4
    assert rel_diff(weighting.ConFIG()(gram32).double() @ jac, config_expected) < 1e-4


def test_aligned_mtl_ignores_the_float32_noise_of_the_optimizers_gramian():
    """Task 2's gradient is a combination of the others' (rank 2). The optimizer's Gramian is
    float64 but summed in float32, so the zero eigenvalue comes out as float32 rounding noise,
    which must count as zero (the authors' tolerance, float32's eps), not as ``s_min``."""
    from mtlkit.surgery._gramian import working_gramian

    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(3, 100_000, generator=gen)
    jac[2] = 0.7 * jac[0] + 0.3 * jac[1]
    exact = (jac.double() @ jac.double().T).numpy()
    values, vectors = np.linalg.eigh(exact)
    keep = values > values.max() * 3 * np.finfo(np.float32).eps
    values, vectors = values[keep], vectors[:, keep]
    balance = math.sqrt(values.min()) * vectors @ np.diag(values**-0.5) @ vectors.T
    expected = torch.from_numpy(balance @ np.full(3, 1 / 3))
    assert int(keep.sum()) == 2
    for gram in (working_gramian(jac), torch.from_numpy(exact)):
        torch.testing.assert_close(weighting.AlignedMTL()(gram), expected, rtol=1e-4, atol=0)


# ------------------------------------------------------------ fair resource allocation


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_fairgrad_solves_its_equation_like_scipy(alpha, num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    w = weighting.FairGrad(alpha)(gram)
    residual = (gram @ w) / w.pow(-1 / alpha) - 1
    assert float(residual.abs().max()) < 1e-8
    expected = torch.from_numpy(ref.alpha_fair(gram.numpy(), alpha))
    assert rel_diff(w, expected) < 1e-6


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_fairgrad_equals_torchjd(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    ours = weighting.FairGrad(2.0)(jac @ jac.T) @ jac
    assert rel_diff(ours, tjd.FairGrad(alpha=2.0)(jac)) < 1e-6  # least squares' tolerance


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_nash_mtl_solves_eq3(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    gram = jac @ jac.T
    w = weighting.NashMTL()(gram)
    assert (w > 0).all()
    assert float(((gram @ w) * w - 1).abs().max()) < 1e-8
    d = w @ jac
    assert abs(float(d @ d) - num_tasks) < 1e-7 * num_tasks  # |d|^2 = sum_i w_i (G w)_i = T


def test_nash_mtl_clipped_equals_torchjd_where_torchjd_converges():
    """torchjd (ECOS, at most 20 convex programs, clips |d| at 1) often reaches eq. 3 for a
    few tasks of similar scales; wherever its own weights satisfy eq. 3, our clipped
    solution equals its result."""
    converged = 0
    for num_tasks in (2, 3, 4):
        for seed in range(3):
            jac = jac_case(num_tasks, seed)
            scales = torch.linspace(1, 2, num_tasks, dtype=torch.float64)[:, None]
            jac = jac / jac.norm(dim=1, keepdim=True) * scales
            gram = jac @ jac.T
            theirs = tjd.NashMTL(n_tasks=num_tasks).weighting(jac)
            products = (gram @ theirs) * theirs  # all equal at eq. 3 (up to the clip)
            if not (products.min() > 0 and products.max() / products.min() < 1 + 1e-6):
                continue
            converged += 1
            ours = weighting.NashMTL(max_norm=1.0)(gram) @ jac
            assert abs(float(ours.norm()) - 1) < 1e-9
            assert rel_diff(ours, theirs @ jac) < 1e-6
    assert converged >= 6  # of 9: the comparison is not vacuous


def test_torchjd_nash_mtl_misses_eq3_when_scales_differ():
    """The departure: with gradient norms 0.3 to 3, torchjd's weights are far from eq. 3
    (``w_i (G w)_i`` should be equal for every task, up to the clipping scale)."""
    jac = jac_case(3, 0)
    gram = jac @ jac.T
    theirs = tjd.NashMTL(n_tasks=3).weighting(jac)
    ours = weighting.NashMTL()(gram)
    spread = lambda w: float(((gram @ w) * w).max() / ((gram @ w) * w).min())  # noqa: E731
    assert spread(theirs) > 10
    assert spread(ours) < 1 + 1e-8


# ------------------------------------------------------------ surgery-style and baselines


@pytest.mark.parametrize(("num_tasks", "seed"), CASES)
def test_pcgrad_on_device_equals_the_textbook_loop_with_its_orders(num_tasks, seed):
    jac = jac_case(num_tasks, seed)
    w = weighting.PCGrad(seed=seed)(jac @ jac.T)
    orders = ref.replay_orders(seed, num_tasks)[0]
    expected = ref.pcgrad_with_orders(jac.numpy(), orders)
    assert rel_diff(w @ jac, torch.from_numpy(expected)) < 1e-12


def _pcgrad_weights_before_the_port(gram: torch.Tensor, gen: torch.Generator) -> list[float]:
    """The host implementation this module had before it ran on the device (for "today's
    results"): Python floats, math.fsum, the same generator calls."""
    g = gram.to(torch.float64).tolist()
    t = len(g)
    total = [0.0] * t
    for i in range(t):
        coeffs = [0.0] * t
        coeffs[i] = 1.0
        others = [j for j in range(t) if j != i]
        for k in torch.randperm(len(others), generator=gen).tolist():
            j = others[k]
            if not g[j][j] > 0.0:
                continue
            dot = math.fsum(coeffs[m] * g[m][j] for m in range(t))
            if dot < 0.0:
                coeffs[j] -= dot / g[j][j]
        total = [a + b for a, b in zip(total, coeffs, strict=True)]
    return total


@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_weights_keep_their_results_and_generator_stream(seed):
    jac = jac_case(5, seed)
    gram = jac @ jac.T
    gen_new, gen_old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(3):  # several steps: the generator advances identically
        new = pcgrad_weights(gram, gen_new)
        old = torch.tensor(_pcgrad_weights_before_the_port(gram, gen_old), dtype=torch.float64)
        torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    assert torch.equal(gen_new.get_state(), gen_old.get_state())


def test_pcgrad_two_tasks_equals_torchjd():
    jac = jac_case(2, 0)  # with two tasks the visiting order does not matter
    ours = weighting.PCGrad(seed=0)(jac @ jac.T) @ jac
    assert rel_diff(ours, tjd.PCGrad()(jac)) < 1e-12


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_gradvac_equals_the_algorithm_on_vectors_over_steps(num_tasks):
    gen = torch.Generator().manual_seed(num_tasks)
    vac = weighting.GradVac(beta=0.3, eps=0.0, seed=7)  # the paper has no eps
    orders = ref.replay_orders(7, num_tasks, steps=4)
    targets = np.zeros((num_tasks, num_tasks))
    for step in range(4):
        jac = ref.random_jacobian(gen, num_tasks)
        expected, targets = ref.gradvac_step(jac.numpy(), orders[step], targets, 0.3)
        assert rel_diff(vac(jac @ jac.T) @ jac, torch.from_numpy(expected)) < 1e-10
        np.testing.assert_allclose(vac.targets.numpy(), targets, atol=1e-12)


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_gradvac_equals_torchjd_with_the_same_orders(num_tasks):
    gen = torch.Generator().manual_seed(num_tasks)
    ours, theirs = weighting.GradVac(seed=11), tjd.GradVac()
    torch.manual_seed(11)  # torchjd draws the same randperm sequence from the global generator
    for _ in range(4):
        jac = ref.random_jacobian(gen, num_tasks)
        assert rel_diff(ours(jac @ jac.T) @ jac, theirs(jac)) < 1e-6


def test_mean_sum_and_random_weights():
    gram = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(weighting.Mean()(gram), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(weighting.Sum()(gram), torch.ones(4, dtype=torch.float64))
    method, gen = weighting.Random(seed=3), torch.Generator().manual_seed(3)
    for _ in range(3):
        expected = torch.randn(4, generator=gen, dtype=torch.float64).softmax(0)
        torch.testing.assert_close(method(gram), expected)


def test_random_weights_are_spread_like_the_paper_says():
    method = weighting.Random(seed=0)
    draws = torch.stack([method(torch.eye(3)) for _ in range(4000)])
    assert (draws > 0).all()
    torch.testing.assert_close(draws.sum(1), torch.ones(4000))
    torch.testing.assert_close(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    assert float(draws.std(0).min()) > 0.1  # genuinely random, not near-uniform


def test_config_on_linearly_dependent_gradients_uses_least_squares_like_pinv():
    """Three gradients in a plane: no direction makes the same angle with all three, and
    ConFIG's pseudo-inverse gives the least-squares one (the length then is not sum |g_i|)."""
    jac = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-2.0, 2.0]], dtype=torch.float64)
    ours = weighting.ConFIG()(jac @ jac.T) @ jac
    expected = torch.from_numpy(ref.config_update(jac.numpy()))
    assert rel_diff(ours, expected) < 1e-9
    assert rel_diff(ours, tjd.ConFIG()(jac)) < 1e-9
