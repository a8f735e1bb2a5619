"""Non-negative quadratic programs ``min 1/2 z^T Q z + q^T z  s.t.  z >= 0`` on the device.

UPGrad, DualProj and MGDA reduce to this problem with ``Q`` the (ridged, positive-definite)
Gramian. Its solution is characterised by a *free set* F: ``z_F = -Q_FF^{-1} q_F``, ``z`` zero
elsewhere, ``z_F >= 0`` and the gradient ``Q z + q >= 0`` off F. Two exact solvers find F with
a fixed number of tensor operations and no host read:

- up to :data:`ENUMERATE_MAX` tasks, every free set at once (one batched Cholesky of ``2^T``
  small systems); the one satisfying the conditions is the solution;
- above, block principal pivoting (Judice and Pires 1994, as in Kim and Park's NNLS): flip every
  violated index while the number of violations falls, else only the largest violated index
  (Murty's rule, which terminates for positive-definite ``Q``), for :func:`pivoting_iterations`
  iterations. Enumeration is exact and cheaper up to 10 tasks (one batched solve of at most
  1024 systems); pivoting costs about 20 tensor operations per iteration.
"""

from __future__ import annotations

import functools

import torch

from mtlkit.weighting._linalg import cholesky_solve

ENUMERATE_MAX = 10
"""Largest number of tasks solved by enumerating the ``2^T`` free sets."""


def pivoting_iterations(num_tasks: int) -> int:
    """Iteration cap of block principal pivoting: ``3 T + 3``.

    On 3,000 random problems with T = 5..10 (rank-deficient, duplicated, zero and opposed
    gradients among them; ``python tests/weighting/test_qp_solver.py --problems 3000``) the
    most iterations needed were 23 (T = 9) and 20 (T = 10).
    """
    return 3 * num_tasks + 3


@functools.lru_cache(maxsize=16)
def _all_free_sets(num_tasks: int, device: torch.device) -> torch.Tensor:
    codes = torch.arange(2**num_tasks, device=device)
    return (codes[:, None] >> torch.arange(num_tasks, device=device)) & 1 == 1


def solve_on_free(q_mat: torch.Tensor, rhs: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``x`` with ``Q_FF x_F = rhs_F`` and ``x = 0`` off F, for a batch of free sets.

    Args:
        q_mat: The positive-definite ``(T, T)`` matrix.
        rhs: ``(..., T, K)`` right-hand sides.
        free: ``(..., T)`` boolean free sets, broadcastable against ``rhs``'s batch.
    """
    eye = torch.eye(q_mat.shape[0], dtype=q_mat.dtype, device=q_mat.device)
    system = torch.where(free[..., :, None] & free[..., None, :], q_mat, eye)
    factor = torch.linalg.cholesky_ex(system).L
    return cholesky_solve(factor, torch.where(free[..., :, None], rhs, 0.0))


def nonneg_qp(q_mat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Solve ``min 1/2 z^T Q z + q_b^T z, z >= 0`` for each row ``q_b`` of ``q`` (shape (B, T)).

    Example:
        >>> q_mat = torch.eye(2, dtype=torch.float64)
        >>> nonneg_qp(q_mat, torch.tensor([[-1.0, 2.0]], dtype=torch.float64))
        tensor([[1., 0.]], dtype=torch.float64)
    """
    if q.shape[-1] <= ENUMERATE_MAX:
        return _enumerate(q_mat, q)
    return _pivoting(q_mat, q)


def _enumerate(q_mat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    free = _all_free_sets(q.shape[-1], q.device)  # (S, T)
    z = solve_on_free(q_mat, -q.T, free)  # (S, T, B)
    grad = q_mat @ z + q.T
    violation = torch.where(free[:, :, None], -z, -grad).amax(1)  # (S, B)
    best = violation.argmin(0)  # the free set whose conditions hold (up to rounding)
    z = z.gather(0, best[None, None, :].expand(1, *z.shape[1:]))[0]
    return z.T.clamp_min(0)


def _pivoting(q_mat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    batch, num_tasks = q.shape
    index = torch.arange(1, num_tasks + 1, device=q.device)
    tol = 1e-12 * q.abs().amax(-1, keepdim=True)
    active = q > 0  # z = 0 solves the coordinates whose gradient at 0 is positive
    best = torch.full((batch,), num_tasks + 1, device=q.device)
    improving = torch.ones(batch, dtype=torch.bool, device=q.device)
    z = torch.zeros_like(q)
    for _ in range(pivoting_iterations(num_tasks)):
        z = solve_on_free(q_mat, -q[:, :, None], ~active)[..., 0]
        grad = torch.addmm(q, z, q_mat)
        violated = torch.where(active, grad, z) < -tol
        count = violated.sum(-1)
        improving = count < best
        best = torch.minimum(best, count)
        largest = (index == (violated * index).argmax(-1, keepdim=True) + 1) & violated
        active = active ^ torch.where(improving[:, None], violated, largest)
    return z.clamp_min(0)
