"""Small weightings written for the optimizer tests, independent of mtlkit.weighting's methods.

Each is simple enough to check by hand; together they cover a constant, a device-side
solution, a stateful method and a loss weighting with its own parameters.
"""

from __future__ import annotations

import torch

from mtlkit.weighting import LossWeighting, Weighting


class Fixed(Weighting):
    """Constant weights."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def weights(self, gramian):
        return torch.tensor(self.values, dtype=gramian.dtype, device=gramian.device)


class MinNormOfTwo(Weighting):
    """MGDA's closed form for two tasks: the point of the segment [g1, g2] nearest the origin."""

    def weights(self, gramian):
        g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
        denom = g11 + g22 - 2 * g12
        alpha = torch.where(denom > 0, (g22 - g12) / denom.clamp_min(1e-300), 0.5).clamp(0, 1)
        return torch.stack([alpha, 1 - alpha])


class RunningNorm(Weighting):
    """Weights ``1 / sqrt(ema of |g_i|^2)``: stateful, and infinite for a zero gradient."""

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta
        self.ema: torch.Tensor | None = None

    def weights(self, gramian):
        diag = gramian.diagonal()
        if self.ema is None:
            self.ema = diag.clone()
        else:
            self.ema = self.beta * self.ema + (1 - self.beta) * diag
        return self.ema.rsqrt()

    def reset(self):
        self.ema = None

    def state_dict(self):
        return {} if self.ema is None else {"ema": self.ema.clone()}

    def load_state_dict(self, state):
        self.ema = state["ema"].clone() if "ema" in state else None


class LogVariance(LossWeighting):
    """Kendall et al.'s form ``sum_i exp(-s_i) L_i + s_i`` with learnable ``s``."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.log_var = torch.nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses):
        return (torch.exp(-self.log_var) * losses + self.log_var).sum()


class LogSumExp(LossWeighting):
    """``log sum_i exp(L_i)``: nonlinear in the losses (weights softmax(L)), no parameters."""

    def forward(self, losses):
        return torch.logsumexp(losses, dim=0)
