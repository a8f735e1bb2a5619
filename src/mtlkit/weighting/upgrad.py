"""UPGrad (Quinton and Rey 2024, "Jacobian Descent for Multi-Objective Optimization")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import scaled_gramian
from mtlkit.weighting._qp import nonneg_qp


def _check_reg_eps(name: str, reg_eps: float) -> float:
    if isinstance(reg_eps, bool) or not isinstance(reg_eps, int | float) or not reg_eps >= 0:
        raise ValueError(f"{name}: reg_eps: expected a number >= 0, got {reg_eps!r}")
    return float(reg_eps)


class UPGrad(Weighting):
    r"""Unconflicting projection of gradients: each gradient projected onto the dual cone.

    Each task's share ``g_i / T`` of the mean is projected onto the dual cone
    ``{x : J x >= 0}`` of the gradients, and the projections are summed (Quinton and Rey 2024,
    arXiv:2406.16232, eq. 5). By their Proposition 1 the projection of ``J^T u`` is ``J^T v``
    with ``v`` the solution of ``min v^T G v  s.t.  v >= u``; the weights are the sum of the T
    solutions for ``u = e_i / T``. The combined gradient never conflicts with any task:
    ``J (w @ J) >= 0``.

    Args:
        reg_eps: Ridge added to the trace-normalised Gramian. The default 0 solves the exact
            problem; where the cosine matrix is singular, the smallest safe ridge (1e-12 of it
            for float64 rounding, more for float32) is still added, so that the solver's
            Cholesky factors exist.

    Departures from torchjd's ``UPGrad`` (whose QPs go to quadprog on the host): torchjd adds
    ``1e-4 I`` to the normalised Gramian, which relaxes the non-conflict guarantee by
    ``1e-4 tr(G) v_i`` and breaks it for a task whose gradient is 100x smaller than the others;
    ``reg_eps=1e-4`` reproduces it. The QPs are solved in the coordinates of the unit
    gradients (``G = D C D``), where the safety ridge of a singular Gramian is relative to each
    task's own scale, so the guarantee holds for gradient norms from 1e-5 to 1e5 alike.
    torchjd also treats a Gramian of trace below 1e-4 as zero
    (its weights become the mean); here any non-zero Gramian is normalised, so the weights do
    not depend on the gradients' scale. The QPs are solved exactly on the Gramian's device
    (:mod:`mtlkit.weighting._qp`).

    Example:
        >>> import torch
        >>> from mtlkit.weighting import UPGrad
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> w = UPGrad()(J @ J.T)
        >>> d = w @ J
        >>> bool((J @ d >= -1e-12).all())             # conflicts with no task
        True
        >>> d
        tensor([0.2500, 0.7500], dtype=torch.float64)
    """

    def __init__(self, reg_eps: float = 0.0) -> None:
        self.reg_eps = _check_reg_eps(type(self).__name__, reg_eps)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        num_tasks = gramian.shape[0]
        c_mat, scales, nonzero = scaled_gramian(gramian, self.reg_eps)
        share = torch.full((num_tasks,), 1.0 / num_tasks, dtype=c_mat.dtype,
                           device=c_mat.device)
        # v_i = u_i + z_i, u_i = e_i / T: min 1/2 z^T G z + (G u_i)^T z over z >= 0, solved
        # in x = D z, where G = D C D becomes C and (G u_i)_j / d_j = (d_i / T) C_ij
        x = nonneg_qp(c_mat, torch.where(nonzero, share * scales, 0.0)[:, None] * c_mat)
        return (share + (x / scales).sum(0)).to(gramian.dtype)

    def __repr__(self) -> str:
        return f"UPGrad(reg_eps={self.reg_eps})"
