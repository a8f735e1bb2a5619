"""IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning"), generalised by Quinton and
Rey 2024 to linearly dependent gradients."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import pinv_cutoff, pinv_solve, unit_gramian


class IMTLG(Weighting):
    r"""Impartial gradients: the combination whose projection onto every unit gradient is equal.

    The weights ``w``, summing to 1, make ``u_i^T (w @ J)`` the same for every task ``i``
    (``u_i`` the unit gradients; Liu et al. 2021, ICLR, eq. 10): ``G w`` is proportional to
    the gradient norms ``d``, so ``w = G^+ d / 1^T G^+ d`` (Quinton and Rey 2024's form, which
    allows linearly dependent gradients). It is computed on the cosine matrix ``C``:
    ``w`` is proportional to ``D^-1 C^+ 1`` (equal to ``G^+ d`` whenever ``G`` is invertible),
    which keeps the weights exact when the tasks' gradient norms differ by many orders of
    magnitude. A zero gradient gets weight 0; weights that sum to (numerically) 0 give 0.

    Departures from torchjd's ``IMTLG``: the pseudo-inverse is a refined Tikhonov solve
    (:func:`mtlkit.weighting._linalg.pinv_solve`) that drops eigen-directions of ``C`` below
    about ``30 T eps`` (``eps`` of the Gramian's dtype, ``sqrt(eps)`` in float64), instead of
    ``torch.linalg.pinv`` (cutoff ``T eps``, which inverts rounding noise, and an
    eigendecomposition that synchronises with the host on CUDA); for linearly dependent
    gradients the least-squares sense is that of the cosine matrix, not of ``G``. Both agree
    for well-conditioned gradients.

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
        cutoff = pinv_cutoff(gramian.shape[0], gramian.dtype)
        y = pinv_solve(cosines, nonzero.to(cosines.dtype), cutoff)
        w = torch.where(nonzero, y / torch.where(nonzero, norms, torch.ones_like(norms)), 0.0)
        total = w.sum()
        ok = total.abs() > 1e-12 * w.abs().sum()
        return torch.where(ok, w / torch.where(ok, total, torch.ones_like(total)), 0.0).to(
            gramian.dtype
        )
