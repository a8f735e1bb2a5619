"""Uncertainty weighting (Kendall et al. 2018, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting._checks import optional_tasks, task_losses


class UncertaintyWeighting(LossWeighting):
    r"""Homoscedastic uncertainty weighting: ``sum_i (exp(-s_i) L_i + s_i) / 2``.

    Each task has a learned log-variance ``s_i = log sigma_i^2`` (Kendall et al., CVPR 2018,
    eq. 7 with ``s = log sigma^2``, the stable form of the paper's ``L / (2 sigma^2) +
    log sigma``). Minimising over ``s_i`` gives ``s_i = log L_i``: each loss is weighted by
    about ``1 / (2 L_i)``.

    The log-variances are the :class:`torch.nn.Parameter` :attr:`log_vars`, **trained by your
    optimizer**: pass ``weighting.parameters()`` to it (``MultiTaskOptimizer`` refuses a
    weighting whose parameters the optimizer does not own).

    Args:
        num_tasks: Number of tasks T (the length of ``log_vars``, initialised to 0). Required
            in practice: ``None`` (what ``by_name("uncertainty")`` gives) builds no parameter,
            and the first call then raises, since the optimizer must own the log-variances
            from its first step.

    Departure: the paper writes classification losses as ``L / sigma^2 + log sigma``; one form
    is used for every task here (as in most implementations). At the optimum over ``s_i`` both
    forms weight the loss by ``1 / (2 L_i)``.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import UncertaintyWeighting
        >>> model = torch.nn.Linear(4, 2)
        >>> weighting = UncertaintyWeighting(num_tasks=2)
        >>> optimizer = torch.optim.Adam([*model.parameters(), *weighting.parameters()])
        >>> weighting(torch.tensor([2.0, 0.5]))       # s = 0: half the sum
        tensor(1.2500, grad_fn=<MulBackward0>)
    """

    def __init__(self, num_tasks: int | None = None) -> None:
        super().__init__()
        self.num_tasks = optional_tasks("UncertaintyWeighting", num_tasks)
        self.log_vars = (None if num_tasks is None
                         else torch.nn.Parameter(torch.zeros(self.num_tasks)))
        """The learned log-variances ``s_i = log sigma_i^2`` (give them to your optimizer)."""

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_vars is None:
            raise ValueError(
                "UncertaintyWeighting: num_tasks: expected the number of tasks at construction "
                "(the log-variances are parameters your optimizer must own from the first "
                "step), got None"
            )
        losses = task_losses("UncertaintyWeighting", losses, self.num_tasks)
        s = self.log_vars.to(losses.dtype)
        return 0.5 * (torch.exp(-s) * losses + s).sum()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
