"""ConFIG (Liu et al. 2025, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import pinv_cutoff, pinv_solve, unit_gramian


class ConFIG(Weighting):
    r"""Conflict-free update: equal cosine with every gradient, length the gradients' projections.

    The direction is ``x = U^+ 1`` (``U`` the unit gradients as rows): the minimum-norm vector
    with ``u_i^T x = 1`` for every task, so it makes the same angle with every gradient. Its
    length is the sum of the gradients' projections onto it (Liu et al., ICLR 2025, eq. 2;
    arXiv:2408.11104). In Gramian terms ``x = U^T C^+ 1`` with ``C`` the cosine matrix, and the
    weights are ``w_j = s (C^+ 1)_j / |g_j|`` with ``s = sum_i |g_i| (C C^+ 1)_i / ((C^+ 1)^T C
    C^+ 1)``. A zero gradient gets weight 0.

    Departure from torchjd's ``ConFIG`` (which takes the pseudo-inverse of the T x P matrix of
    unit gradients): the pseudo-inverse of the T x T cosine matrix, by a refined Tikhonov
    solve that drops eigen-directions below about ``30 T eps`` (``sqrt(eps)`` in float64;
    :func:`mtlkit.weighting._linalg.pinv_solve`), with no eigendecomposition (no host
    synchronisation on CUDA); the two agree unless the gradients are nearly linearly dependent.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import ConFIG
        >>> J = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> d = ConFIG()(J @ J.T) @ J           # along (1, 1), length 3/sqrt(2) + 1/sqrt(2)
        >>> d.round(decimals=6)
        tensor([2., 2.], dtype=torch.float64)
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        cosines, norms, nonzero = unit_gramian(gramian)
        cutoff = pinv_cutoff(gramian.shape[0], gramian.dtype)
        y = pinv_solve(cosines, nonzero.to(cosines.dtype), cutoff)
        cy = cosines @ y
        sq_norm = y @ cy  # |x|^2
        length = norms @ cy  # sum_i g_i^T x, in units of the normalised Gramian
        ok = sq_norm > 1e-30
        scale = torch.where(ok, length / torch.where(ok, sq_norm, torch.ones_like(sq_norm)), 0.0)
        w = torch.where(nonzero, y / torch.where(nonzero, norms, torch.ones_like(norms)), 0.0)
        return (scale * w).to(gramian.dtype)
