"""IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning"), generalised by Quinton and
Rey 2024 to linearly dependent gradients."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import damped_pinv_solve, unit_gramian


class IMTLG(Weighting):
    r"""Impartial gradients: the combination whose projection onto every unit gradient is equal.

    The weights ``w``, summing to 1, make ``u_i^T (w @ J)`` the same for every task ``i``
    (``u_i`` the unit gradients; Liu et al. 2021, ICLR, eq. 10): ``G w`` is proportional to
    the gradient norms ``d``, so ``w = G^+ d / 1^T G^+ d`` (Quinton and Rey 2024's form, which
    allows linearly dependent gradients). It is computed on the cosine matrix ``C``:
    ``w`` is proportional to ``D^-1 C^+ 1`` (equal to ``G^+ d`` whenever ``G`` is invertible),
    which keeps the weights exact when the tasks' gradient norms differ by many orders of
    magnitude. A zero gradient gets weight 0; weights that sum to (numerically) 0 give 0.

    Departures from torchjd's ``IMTLG``: the pseudo-inverse is ``(C + dI)^-1 C (C + dI)^-1``
    with ``d = T eps tr(C)`` (``eps`` of the Gramian's dtype) instead of ``torch.linalg.pinv``,
    which needs an eigendecomposition that synchronises with the host on CUDA; for linearly
    dependent gradients the least-squares sense is that of the cosine matrix, not of ``G``.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import IMTLG
        >>> J = torch.tensor([[4.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> d = IMTLG()(J @ J.T) @ J
        >>> units = J / J.norm(dim=1, keepdim=True)
        >>> torch.allclose(units @ d, (units @ d)[0])            # equal projections
        True
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        cosines, norms, nonzero = unit_gramian(gramian)
        rcond = gramian.shape[0] * torch.finfo(gramian.dtype).eps
        y = damped_pinv_solve(cosines, nonzero.to(cosines.dtype), rcond)
        w = torch.where(nonzero, y / torch.where(nonzero, norms, torch.ones_like(norms)), 0.0)
        total = w.sum()
        ok = total.abs() > 1e-12 * w.abs().sum()
        return torch.where(ok, w / torch.where(ok, total, torch.ones_like(total)), 0.0).to(
            gramian.dtype
        )
