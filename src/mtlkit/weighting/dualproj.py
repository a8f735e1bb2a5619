"""DualProj (Lopez-Paz and Ranzato 2017, "Gradient Episodic Memory for Continual Learning")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import scaled_gramian
from mtlkit.weighting._qp import nonneg_qp
from mtlkit.weighting.upgrad import _check_reg_eps


class DualProj(Weighting):
    r"""The mean gradient projected onto the dual cone of the gradients (GEM's projection).

    The mean ``J^T u`` (``u = 1/T``) is replaced by the closest vector that conflicts with no
    task, ``argmin ||x - J^T u||  s.t.  J x >= 0`` (Lopez-Paz and Ranzato 2017, eq. 11, solved
    through its dual ``min v^T G v  s.t.  v >= u``, whose solution is the weights). When no
    task conflicts with the mean, the weights are the mean's.

    Args:
        reg_eps: Ridge added to the trace-normalised Gramian (default 0: the exact problem).

    Departures from torchjd's ``DualProj``: as for :class:`UPGrad` (exact problem instead of a
    ``1e-4`` ridge, ``reg_eps=1e-4`` reproduces it; solved in the unit gradients' coordinates,
    so that tiny tasks keep their constraint; no absolute trace cutoff; on the Gramian's
    device).

    Example:
        >>> import torch
        >>> from mtlkit.weighting import DualProj
        >>> J = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
        >>> J @ J.mean(0)                      # the mean (-0.5, 0.5) conflicts with task 0
        tensor([-0.5000,  1.5000], dtype=torch.float64)
        >>> w = DualProj()(J @ J.T)
        >>> w @ J                              # its closest vector that conflicts with none
        tensor([0.0000, 0.5000], dtype=torch.float64)
    """

    def __init__(self, reg_eps: float = 0.0) -> None:
        self.reg_eps = _check_reg_eps(type(self).__name__, reg_eps)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        num_tasks = gramian.shape[0]
        c_mat, scales, nonzero = scaled_gramian(gramian, self.reg_eps)
        mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=c_mat.dtype, device=c_mat.device)
        # v = u + z, z >= 0, solved in x = D z: (G u)_i / d_i = (C D u)_i
        x = nonneg_qp(c_mat, (c_mat @ torch.where(nonzero, scales * mean, 0.0))[None])[0]
        return (mean + x / scales).to(gramian.dtype)

    def __repr__(self) -> str:
        return f"DualProj(reg_eps={self.reg_eps})"
