"""MGDA (Desideri 2012; Sener and Koltun 2018, "Multi-Task Learning as Multi-Objective
Optimization")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import normalized, ridged
from mtlkit.weighting._qp import nonneg_qp


class MGDA(Weighting):
    r"""The minimum-norm point of the convex hull of the gradients.

    The weights solve ``min_{w in simplex} w^T G w`` (Desideri 2012; Sener and Koltun 2018,
    eq. 3): ``w @ J`` is the shortest convex combination of the gradients, a common descent
    direction (``J (w @ J) >= ||w @ J||^2 >= 0``), and 0 at a Pareto-stationary point. The
    simplex QP is solved exactly as the non-negative QP ``min 1/2 z^T G z - 1^T z, z >= 0``
    with ``w = z / sum(z)`` (the two share their KKT conditions up to that scale).

    Departure from the paper and from torchjd's ``MGDA``: both run Frank-Wolfe (Sener and
    Koltun's Algorithm 2; torchjd stops once the step is below ``epsilon=1e-3``, at most 100
    iterations), whose result is within that tolerance of the minimum-norm point; here the QP
    is solved exactly, on the Gramian's device. A ridge of at most 1e-12 of the trace is added
    to a singular Gramian (see :mod:`mtlkit.weighting._linalg`).

    Example:
        >>> import torch
        >>> from mtlkit.weighting import MGDA
        >>> J = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> w = MGDA()(J @ J.T)
        >>> w
        tensor([0.2000, 0.8000], dtype=torch.float64)
        >>> w @ J                        # the closest point to 0 on the segment
        tensor([0.4000, 0.8000], dtype=torch.float64)
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        q_mat = ridged(normalized(gramian))
        minus_ones = torch.full((1, gramian.shape[0]), -1.0, dtype=q_mat.dtype,
                                device=q_mat.device)
        z = nonneg_qp(q_mat, minus_ones)[0]
        return (z / z.sum()).to(gramian.dtype)
