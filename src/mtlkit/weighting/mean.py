"""The mean of the task gradients (equal weights 1/T)."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting


class Mean(Weighting):
    """Equal weights ``1/T``: the gradient of the mean loss, the usual multi-task baseline.

    The weights do not depend on the Gramian's values, only on its size.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import Mean
        >>> Mean()(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        num_tasks = gramian.shape[0]
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gramian.dtype,
                          device=gramian.device)
