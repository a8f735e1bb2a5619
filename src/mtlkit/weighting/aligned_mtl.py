"""Aligned-MTL (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task
Learning")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import normalized


class AlignedMTL(Weighting):
    r"""Aligned gradients: the Jacobian's singular values all set to its smallest one.

    With ``G = V diag(s) V^T`` (rank ``r``), the balance matrix ``B = sqrt(s_min) V_r
    diag(s_r)^{-1/2} V_r^T`` makes the combined system's condition number 1, and the weights
    are ``B w0`` with ``w0 = 1/T`` (Senushkin et al., CVPR 2023, Algorithm 1; ``s_min`` the
    smallest non-zero eigenvalue, "min" scale). Eigenvalues below ``s_max T eps`` count as
    zero, ``eps`` that of the Gramian's dtype but at least float32's, as in the authors' code
    (``torch.finfo().eps``): the optimizer's Gramian is float64 but summed in float32 from
    float32 gradients, so a direction in which the gradients are linearly dependent carries
    float32 rounding noise, which must not become ``s_min`` (it would shrink every weight
    by orders of magnitude). A zero Gramian gives ``w0``.

    Departures: torchjd's ``AlignedMTL`` takes float64's ``eps`` for a float64 Gramian, so
    the two differ where an eigenvalue lies between ``T`` times float64's and float32's
    ``eps`` (relative to the largest); elsewhere the results are equal. The authors' code
    weights by ``B 1``, ``T`` times these weights (``w0 = 1/T`` as in Algorithm 1 and
    torchjd); the direction is the same. The
    eigendecomposition (``torch.linalg.eigh``, in float64 on the trace-normalised Gramian)
    synchronises with the host once per call on CUDA: PyTorch has no non-synchronising
    eigensolver, and no cheaper route to the smallest eigenvalue and ``G^{-1/2}`` exists.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import AlignedMTL
        >>> J = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> AlignedMTL()(J @ J.T) @ J              # both singular values brought to 1
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        num_tasks = gramian.shape[0]
        g = normalized(gramian)
        values, vectors = torch.linalg.eigh(g)
        eps = max(torch.finfo(gramian.dtype).eps, torch.finfo(torch.float32).eps)
        tol = values.amax() * num_tasks * eps
        kept = values > tol
        safe = torch.where(kept, values, torch.ones_like(values))
        smallest = torch.where(kept, values, torch.full_like(values, torch.inf)).amin()
        scale = torch.where(kept, (smallest / safe).sqrt(), 0.0)
        w0 = torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype, device=g.device)
        balanced = vectors @ (scale * (vectors.T @ w0))
        return torch.where(kept.any(), balanced, w0).to(gramian.dtype)
