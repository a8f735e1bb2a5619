"""Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import Weighting
from mtlkit.weighting._linalg import to_device
from mtlkit.weighting._seeded import Seeded


class Random(Seeded, Weighting):
    """Random loss weighting (RLW): fresh weights ``softmax(z)``, ``z ~ N(0, I)``, at every call.

    Lin et al. (TMLR 2022, Algorithm 1 with the standard normal distribution) show that
    random weights summing to 1 are a strong baseline; the weights do not depend on the
    Gramian's values. They are drawn from a dedicated CPU generator and copied to the
    Gramian's device (T numbers host to device, no host read).

    Args:
        seed: Seed of the generator (``None``: nondeterministic). Its state is the state.

    Departure from torchjd's ``Random``: the draws come from this generator, not from torch's
    global one on the Gramian's device, so the same seed gives the same weights on any device.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import Random
        >>> w = Random(seed=0)(torch.eye(3))
        >>> bool((w > 0).all()), round(float(w.sum()), 6)
        (True, 1.0)
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed(seed)

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        draw = torch.randn(gramian.shape[0], generator=self.generator, dtype=torch.float64)
        return to_device(draw.softmax(0).to(gramian.dtype), gramian.device)
