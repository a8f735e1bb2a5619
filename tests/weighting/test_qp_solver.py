"""The non-negative QP solver: block principal pivoting (used above 10 tasks) against the
enumeration of every free set, and both against the KKT conditions.

Run as a script to measure how many pivoting iterations random problems need (the numbers
quoted in ``mtlkit.weighting._qp.pivoting_iterations``):

    PYTHONPATH=src python tests/weighting/test_qp_solver.py --problems 3000
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import weighting_refs as ref

from mtlkit import weighting
from mtlkit.weighting import _qp
from mtlkit.weighting._linalg import normalized, ridged


def problem(seed: int, num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ridged Gramian (duplicated, zero, opposed and rank-deficient gradients among them)
    and the right-hand sides of UPGrad (one per task) or MGDA (one)."""
    gen = torch.Generator().manual_seed(seed)
    dim = int(torch.randint(1, 3 * num_tasks, (1,), generator=gen))
    jac = torch.randn(num_tasks, dim, generator=gen, dtype=torch.float64)
    jac *= torch.exp(torch.randn(num_tasks, 1, generator=gen, dtype=torch.float64))
    if seed % 3 == 0:
        jac[1] = -0.9 * jac[0] + 0.1 * jac[1]
    if seed % 5 == 0:
        jac[2] = jac[1]
    if seed % 7 == 0:
        jac[0] = 0
    q_mat = ridged(normalized(jac @ jac.T), (1e-4, 1e-8, 0.0)[seed % 3])
    if seed % 2:
        return q_mat, -torch.ones(1, num_tasks, dtype=torch.float64)
    return q_mat, torch.eye(num_tasks, dtype=torch.float64) / num_tasks @ q_mat


def kkt_residual(q_mat: torch.Tensor, q: torch.Tensor, z: torch.Tensor) -> float:
    """``|z - max(z - grad, 0)|``, 0 exactly at the solution, relative to the problem's scale."""
    grad = z @ q_mat + q
    scale = float(z.abs().max() + q.abs().max())
    return float((z - (z - grad).clamp_min(0)).abs().max()) / scale


@pytest.mark.parametrize("seed", range(150))
def test_pivoting_equals_enumeration_and_satisfies_kkt(seed):
    num_tasks = 5 + seed % 6  # 5..10, where the enumeration is still affordable
    q_mat, q = problem(seed, num_tasks)
    pivoted = _qp._pivoting(q_mat, q)
    enumerated = _qp._enumerate(q_mat, q)
    assert kkt_residual(q_mat, q, pivoted) < 1e-9
    assert kkt_residual(q_mat, q, enumerated) < 1e-9
    # the same minimum (the minimisers agree up to the ridge's conditioning, down to 1e-8)
    objective = lambda z: 0.5 * ((z @ q_mat) * z).sum(-1) + (q * z).sum(-1)  # noqa: E731
    torch.testing.assert_close(objective(pivoted), objective(enumerated), rtol=1e-10,
                               atol=1e-12 * float(objective(enumerated).abs().max()))


def test_twelve_tasks_use_pivoting_and_equal_the_brute_force_references():
    num_tasks = 12
    assert num_tasks > _qp.ENUMERATE_MAX
    jac = ref.random_jacobian(torch.Generator().manual_seed(12), num_tasks, dim=20)
    gram = jac @ jac.T
    g = gram.numpy()
    d = weighting.DualProj()(gram) @ jac
    torch.testing.assert_close(d, torch.from_numpy(ref.dualproj(g)) @ jac, rtol=1e-8, atol=1e-10)
    d = weighting.MGDA()(gram) @ jac
    expected = torch.from_numpy(ref.min_norm_simplex(g)) @ jac
    torch.testing.assert_close(d, expected, rtol=1e-8, atol=1e-10)
    d = weighting.CAGrad(0.4)(gram) @ jac
    expected = torch.from_numpy(ref.cagrad(g, 0.4)) @ jac
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-7)


def test_the_enumeration_is_exact_on_a_known_problem():
    # min 1/2 z^T I z + q^T z, z >= 0: z = max(-q, 0)
    q = torch.tensor([[-1.0, 2.0, -0.5, 0.0]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(_qp._enumerate(eye, q), (-q).clamp_min(0))
    torch.testing.assert_close(_qp._pivoting(eye, q), (-q).clamp_min(0))


def _iterations_needed(q_mat: torch.Tensor, q: torch.Tensor, cap: int) -> int:
    reference = _qp._enumerate(q_mat, q)
    original = _qp.pivoting_iterations
    try:
        for k in range(1, cap + 1):
            _qp.pivoting_iterations = lambda _t, k=k: k
            if kkt_residual(q_mat, q, _qp._pivoting(q_mat, q)) < 1e-9:
                return k
    finally:
        _qp.pivoting_iterations = original
    assert kkt_residual(q_mat, q, reference) < 1e-9
    return cap + 1


def main() -> None:
    parser = argparse.ArgumentParser(description="pivoting iterations needed")
    parser.add_argument("--problems", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst: dict[int, int] = {}
    for seed in range(args.problems):
        num_tasks = 5 + seed % 6
        q_mat, q = problem(seed, num_tasks)
        for row in range(q.shape[0]):
            need = _iterations_needed(q_mat, q[row:row + 1], _qp.pivoting_iterations(num_tasks))
            worst[num_tasks] = max(worst.get(num_tasks, 0), need)
    for num_tasks in sorted(worst):
        cap = _qp.pivoting_iterations(num_tasks)
        print(f"T={num_tasks}: most iterations needed {worst[num_tasks]} (cap {cap})")
    print(f"problems: {args.problems}, all solved within the cap: "
          f"{all(w <= _qp.pivoting_iterations(t) for t, w in worst.items())}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
