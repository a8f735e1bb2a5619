"""MGDA (Desideri 2012; Sener and Koltun 2018, "Multi-Task Learning as Multi-Objective
Optimization")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import scaled_gramian
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
    is solved exactly, on the Gramian's device, in the unit gradients' coordinates (so that the
    tasks' scales do not matter to the solver). A singular cosine matrix gets the smallest
    ridge that keeps it safely positive definite (:mod:`mtlkit.weighting._linalg`); a zero
    gradient is the minimum-norm point (all the weight on it).

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
        c_mat, scales, nonzero = scaled_gramian(gramian)
        # min 1/2 z^T G z - 1^T z in x = D z: min 1/2 x^T C x - (1/d)^T x
        x = nonneg_qp(c_mat, torch.where(nonzero, -1.0 / scales, 0.0)[None])[0]
        z = x / scales
        w = z / z.sum()
        # a zero gradient is the minimum-norm point: all the weight on the first one
        first_zero = (~nonzero).to(torch.int8).argmax()
        one_hot = torch.arange(len(w), device=w.device) == first_zero
        return torch.where((~nonzero).any(), one_hot.to(w.dtype), w).to(gramian.dtype)
