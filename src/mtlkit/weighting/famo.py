"""FAMO (Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization")."""

from __future__ import annotations

import torch

from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting._checks import number, optional_tasks, task_losses

_EPS = 1e-8


class FAMO(LossWeighting):
    r"""Fast adaptive multitask optimization: balance the tasks' log-loss decreases.

    FAMO keeps task logits ``xi`` (weights ``z = softmax(xi)``) and backpropagates
    ``sum_i z_i log L_i / c`` with ``c = sum_i z_i / L_i`` (so the gradient weights
    ``z_i / (c L_i)`` sum to 1). After the step, the logits follow the observed decreases
    ``delta_i = log L_i(before) - log L_i(after)``: ``xi`` takes an Adam step (learning rate
    ``lr``, weight decay ``gamma``) along ``-(diag(z) - z z^T) delta`` (Liu et al., NeurIPS
    2023, Algorithm 1; the defaults of the official ``famo.py``). Losses must be positive.

    The logits are a buffer updated by FAMO itself, not by your optimizer (this weighting has
    no parameters).

    Args:
        num_tasks: Number of tasks T (``None``: taken from the first losses).
        lr: Learning rate of the logits' Adam (0.025).
        gamma: Weight decay of the logits (0.01).

    How the decrease is measured: the official code re-evaluates the same batch after the
    optimizer step; call :meth:`update` with those losses to do the same. Without it, the next
    call's losses (on the next batch, before its step) stand for the "after" losses of the
    previous step: no extra forward pass, at the price of the batch-to-batch noise in delta.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import FAMO
        >>> famo = FAMO(num_tasks=2)
        >>> loss = famo(torch.tensor([1.0, 1.0]))          # z = (1/2, 1/2)
        >>> famo.update(torch.tensor([0.5, 1.0]))          # task 0 improved, task 1 did not
        >>> famo.task_weights()                            # so task 1 gets more weight
        tensor([0.4875, 0.5125])
    """

    def __init__(self, num_tasks: int | None = None, lr: float = 0.025,
                 gamma: float = 0.01) -> None:
        super().__init__()
        self.num_tasks = optional_tasks("FAMO", num_tasks)
        self.lr = number("FAMO", "lr", lr, strict=True)
        self.gamma = number("FAMO", "gamma", gamma)
        self._make_state(self.num_tasks or 0, None)
        self.register_buffer("adam_steps", torch.zeros(()))
        self.register_buffer("pending", torch.zeros((), dtype=torch.bool))
        self._pending = False  # host copy: ``before`` holds losses awaiting their "after" ones

    def _make_state(self, num_tasks: int, device: torch.device | None) -> None:
        for name in ("logits", "exp_avg", "exp_avg_sq", "before"):
            self.register_buffer(name, torch.zeros(num_tasks, device=device))

    def task_weights(self) -> torch.Tensor:
        """The current task weights ``z = softmax(xi)``."""
        return torch.softmax(self.logits, 0)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        losses = task_losses("FAMO", losses, self.num_tasks)
        if self.num_tasks is None:
            self.num_tasks = len(losses)
            self._make_state(self.num_tasks, losses.device)
        if self.training:
            if self._pending:
                self.update(losses)
            self.before.copy_(losses.detach())
            self._set_pending(True)
        z = self.task_weights().to(losses.dtype)
        shifted = losses + _EPS
        c = (z / shifted.detach()).sum()
        return (z * shifted.log()).sum() / c

    @torch.no_grad()
    def update(self, losses_after: torch.Tensor) -> None:
        """Move the logits with the losses measured after the optimizer step (same batch)."""
        after = task_losses("FAMO", losses_after, self.num_tasks).detach().to(self.logits.dtype)
        delta = (self.before + _EPS).log() - (after + _EPS).log()
        z = self.task_weights()
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits  # softmax Jacobian
        beta1, beta2 = 0.9, 0.999  # torch.optim.Adam's defaults, as in the official code
        self.adam_steps += 1
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = self.exp_avg / (1 - beta1**self.adam_steps)
        v_hat = self.exp_avg_sq / (1 - beta2**self.adam_steps)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))
        self._set_pending(False)

    def reset(self) -> None:
        for buffer in (self.logits, self.exp_avg, self.exp_avg_sq, self.before, self.adam_steps):
            buffer.zero_()
        self._set_pending(False)

    def _set_pending(self, value: bool) -> None:
        self._pending = value
        self.pending.fill_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        logits = state_dict.get(prefix + "logits")
        if self.num_tasks is None and logits is not None:
            self.num_tasks = len(logits)
            self._make_state(self.num_tasks, logits.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pending = bool(self.pending)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, lr={self.lr}, gamma={self.gamma}"
