"""The sum of the task gradients (weights 1): the plain summed step."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting


class Sum(Weighting):
    """Weights 1: the gradient of the summed loss, what a plain ``sum(losses).backward()`` does.

    The weights do not depend on the Gramian's values, only on its size.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import Sum
        >>> Sum()(torch.eye(3))
        tensor([1., 1., 1.])
    """

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)
