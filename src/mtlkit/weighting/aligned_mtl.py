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
    smallest non-zero eigenvalue, "min" scale). Eigenvalues below ``s_max T eps`` (``eps`` of
    the Gramian's dtype) count as zero, as in torchjd; a zero Gramian gives ``w0``.

    Departure: none in the result (equal to torchjd's ``AlignedMTL`` with its defaults). The
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
        tol = values.amax() * num_tasks * torch.finfo(gramian.dtype).eps
        kept = values > tol
        safe = torch.where(kept, values, torch.ones_like(values))
        smallest = torch.where(kept, values, torch.full_like(values, torch.inf)).amin()
        scale = torch.where(kept, (smallest / safe).sqrt(), 0.0)
        w0 = torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype, device=g.device)
        balanced = vectors @ (scale * (vectors.T @ w0))
        return torch.where(kept.any(), balanced, w0).to(gramian.dtype)
