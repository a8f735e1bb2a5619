"""SMART's momentum Bregman proximal point step (Jiang et al., 2020, Eq. 3-4 of SMART).

SMART's update at iteration ``t`` minimizes

.. math::

    \\mathcal{F}(\\theta) + \\mu\\, \\mathcal{D}_{\\mathrm{Breg}}(\\theta, \\tilde\\theta_t),
    \\qquad
    \\mathcal{D}_{\\mathrm{Breg}}(\\theta, \\tilde\\theta_t)
      = \\frac{1}{n} \\sum_i \\ell_s\\big(f(x_i; \\theta), f(x_i; \\tilde\\theta_t)\\big),

with the momentum teacher
:math:`\\tilde\\theta_t = (1-\\beta)\\theta_t + \\beta\\tilde\\theta_{t-1}` (an exponential
moving average of the parameters). :class:`BregmanProximal` keeps that teacher; the penalty is
:func:`mtlkit.smart.functional.bregman_penalty`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.smart._options import Kind, check_kind, check_number
from mtlkit.smart.functional import bregman_penalty


class BregmanProximal(nn.Module):
    """An EMA teacher of ``model`` and SMART's Bregman proximal penalty against it.

    At construction the teacher is a deep copy of ``model`` (so it costs one more copy of the
    parameters) with gradients off, in eval mode (no dropout). ``forward(output, *args,
    **kwargs)`` runs the teacher on ``*args, **kwargs`` without gradients and returns
    ``mu * ell_s(output, teacher_output)``, where ``output`` is the current model's output on the
    same inputs. Call :meth:`update` after each optimizer step: ``teacher <- beta * teacher +
    (1 - beta) * model`` for floating parameters; buffers are copied.

    The teacher is a registered submodule (it is in ``state_dict`` and follows ``.to()``); the
    tracked model is not, so its parameters are not listed twice.

    Args:
        model: the module being trained.
        beta: EMA momentum in ``[0, 1)`` (SMART: 0.99).
        mu: weight of the penalty, ``>= 0`` (SMART: 1).
        kind: the divergence, as in :class:`~mtlkit.SmartLoss` (``"classification"``,
            ``"binary"`` for one logit per example, or ``"regression"``; in float32).

    Example:
        >>> import torch
        >>> from mtlkit import BregmanProximal
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> prox = BregmanProximal(model, beta=0.99, mu=1.0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> logits = model(x)
        >>> prox(logits, x).item()           # the teacher equals the model at first
        0.0
        >>> loss = torch.nn.functional.cross_entropy(logits, y) + prox(logits, x)
        >>> loss.backward(); opt.step(); prox.update()
        >>> bool(prox(model(x), x) > 0)     # the model moved, the teacher lags behind
        True
    """

    def __init__(
        self, model: nn.Module, beta: float = 0.99, mu: float = 1.0, kind: Kind = "classification"
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        beta = check_number("beta", beta, positive=False)
        if not beta < 1.0:
            raise ValueError(f"beta: expected a number in [0, 1), got {beta}")
        check_number("mu", mu, positive=False)
        check_kind(kind)
        self.beta, self.mu, self.kind = float(beta), float(mu), kind
        self._model = (model,)  # a tuple: not registered as a submodule
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._pairs = self._match(model.named_parameters(), self.teacher.named_parameters())
        self._buffers_pairs = self._match(model.named_buffers(), self.teacher.named_buffers())

    @staticmethod
    def _match(student: Any, teacher: Any) -> list[tuple[Tensor, Tensor]]:
        s, t = dict(student), dict(teacher)
        if s.keys() != t.keys():
            raise ValueError(
                "model: expected a deep copy with the same parameter and buffer names, got "
                f"{sorted(s.keys() ^ t.keys())[:5]} in only one of them"
            )
        return [(s[k], t[k]) for k in s]

    def train(self, mode: bool = True) -> BregmanProximal:
        """Keep the teacher in eval mode whatever ``mode`` is (it never uses dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def model(self) -> nn.Module:
        """The tracked (student) model."""
        return self._model[0]

    @torch.no_grad()
    def update(self) -> None:
        """Move the teacher towards the model: ``teacher <- beta * teacher + (1 - beta) * model``.

        Example:
            >>> import torch
            >>> from mtlkit import BregmanProximal
            >>> m = torch.nn.Linear(1, 1, bias=False)
            >>> prox = BregmanProximal(m, beta=0.5)
            >>> with torch.no_grad():
            ...     _ = m.weight.fill_(1.0); _ = prox.teacher.weight.fill_(0.0)
            >>> prox.update()
            >>> prox.teacher.weight.item()
            0.5
        """
        if len(self._pairs) != len(list(self.model.parameters())):
            raise RuntimeError(
                "model: its parameters changed after BregmanProximal was built; build a new one"
            )
        floats = [(s, t) for s, t in self._pairs if t.is_floating_point()]
        if floats:
            teach = [t for _, t in floats]
            stud = [s.detach().to(t.device) for s, t in floats]
            torch._foreach_lerp_(teach, stud, 1.0 - self.beta)
        for s, t in self._pairs:
            if not t.is_floating_point():
                t.copy_(s)
        for s, t in self._buffers_pairs:
            t.copy_(s)

    def forward(self, output: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``mu * ell_s(output, teacher(*args, **kwargs))``; gradients reach ``output`` only.

        Args:
            output: the current model's output on the inputs ``*args, **kwargs``.
            *args: positional inputs for the teacher (the same as the model's).
            **kwargs: keyword inputs for the teacher.

        Returns:
            A non-negative float32 scalar.
        """
        if not isinstance(output, Tensor):
            raise TypeError(f"output: expected a torch.Tensor, got {type(output).__name__}")
        with torch.no_grad():
            target = self.teacher(*args, **kwargs)
        if not isinstance(target, Tensor):
            raise TypeError(
                f"teacher: expected to return a torch.Tensor, got {type(target).__name__}; call "
                "penalty() with the tensor you extract from the teacher's output"
            )
        return self.penalty(output, target)

    def penalty(self, output: Tensor, teacher_output: Tensor) -> Tensor:
        """``mu * ell_s(output, teacher_output)`` for a teacher output you computed yourself.

        Example:
            >>> import torch
            >>> from mtlkit import BregmanProximal
            >>> prox = BregmanProximal(torch.nn.Linear(2, 2), mu=2.0, kind="regression")
            >>> prox.penalty(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item()
            10.0
        """
        return bregman_penalty(output, teacher_output, mu=self.mu, kind=self.kind)
