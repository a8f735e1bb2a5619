"""Dynamic weight average (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting._checks import number, optional_tasks, positive_int, task_losses


class DWA(LossWeighting):
    r"""Dynamic weight average: weight each task by how slowly its loss has been falling.

    With ``L_k(t)`` the mean loss of task ``k`` over epoch ``t``, the weights of epoch ``t`` are
    ``lambda_k = T softmax_k(r / temperature)``, ``r_k = L_k(t-1) / L_k(t-2)``, and 1 for the
    first two epochs (Liu et al., CVPR 2019, eq. 7); the loss is ``sum_k lambda_k L_k``.

    The epochs are yours: call :meth:`end_epoch` when one ends, or give ``steps_per_epoch``
    and every that many training calls end one. Without either, the weights stay 1.

    Args:
        num_tasks: Number of tasks T (``None``: taken from the first losses).
        temperature: The softmax temperature (the paper's 2.0).
        steps_per_epoch: If given, an epoch ends after that many calls in training mode.

    State (buffers, in ``state_dict``): the last two epoch means and the running sums of the
    current epoch.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import DWA
        >>> dwa = DWA(num_tasks=2)
        >>> for epoch_losses in ([1.0, 1.0], [0.5, 1.0]):     # task 0 halves, task 1 stalls
        ...     _ = dwa(torch.tensor(epoch_losses))
        ...     dwa.end_epoch()
        >>> dwa.weights()                                      # task 1 now weighs more
        tensor([0.8756, 1.1244])
    """

    def __init__(self, num_tasks: int | None = None, temperature: float = 2.0,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.num_tasks = optional_tasks("DWA", num_tasks)
        self.temperature = number("DWA", "temperature", temperature, strict=True)
        self.steps_per_epoch = (None if steps_per_epoch is None
                                else positive_int("DWA", "steps_per_epoch", steps_per_epoch))
        self._make_state(self.num_tasks or 0, None)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._epochs = 0  # host copies: the forward never reads a buffer on the host
        self._steps = 0

    def _make_state(self, num_tasks: int, device: torch.device | None) -> None:
        self.register_buffer("history", torch.ones(2, num_tasks, device=device))  # t-2, t-1
        self.register_buffer("running", torch.zeros(num_tasks, device=device))

    def weights(self) -> torch.Tensor:
        """The current weights ``lambda`` (ones until two epochs have ended)."""
        if self._epochs < 2:
            return torch.ones_like(self.history[0])
        ratio = self.history[1] / self.history[0]
        return self.num_tasks * torch.softmax(ratio / self.temperature, 0)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        losses = task_losses("DWA", losses, self.num_tasks)
        if self.num_tasks is None:
            self.num_tasks = len(losses)
            self._make_state(self.num_tasks, losses.device)
        if self.training:
            self.running += losses.detach().to(self.running.dtype)
            self._steps += 1
            self.steps.fill_(self._steps)
        loss = (self.weights().to(losses.dtype) * losses).sum()
        if self.training and self.steps_per_epoch is not None \
                and self._steps >= self.steps_per_epoch:
            self.end_epoch()
        return loss

    def end_epoch(self) -> None:
        """Close the epoch: its mean losses become the newest entry of the history."""
        if self._steps == 0:
            return
        self.history.copy_(torch.stack([self.history[1], self.running / self._steps]))
        self._epochs += 1
        self.epochs.fill_(self._epochs)
        self.running.zero_()
        self._steps = 0
        self.steps.zero_()

    def reset(self) -> None:
        self.history.fill_(1.0)
        self.running.zero_()
        self._epochs = self._steps = 0
        self.epochs.zero_()
        self.steps.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        running = state_dict.get(prefix + "running")
        if self.num_tasks is None and running is not None:
            self.num_tasks = len(running)
            self._make_state(self.num_tasks, running.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._epochs, self._steps = int(self.epochs), int(self.steps)

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, temperature={self.temperature}, "
                f"steps_per_epoch={self.steps_per_epoch}")
