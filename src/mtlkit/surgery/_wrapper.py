"""An optimizer that delegates its optimizer surface to a wrapped one (the multi-task base).

Everything a caller, an LR scheduler or a ``GradScaler`` expects of a ``torch.optim.Optimizer``
(``param_groups``, ``state``, ``defaults``, ``zero_grad``, ``step``, ``state_dict``, the step
hooks) is forwarded to the wrapped optimizer; subclasses add their own state through three small
hooks instead of overriding the surface.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch.optim import Optimizer


class _WrappedOptimizer(Optimizer):
    """Forwards the optimizer surface to ``self.optimizer``.

    Subclasses may override :meth:`_params_changed` (a param group was added),
    :meth:`_drop_pending` (``zero_grad`` dropped an unfinished step), :meth:`_check_ready` (before
    ``step``), :meth:`_extra_state`, :meth:`_check_extra_state` and :meth:`_load_extra_state`
    (the ``state_dict`` key named by ``_state_key``).
    """

    _state_key = "wrapper"

    def __init__(self, optimizer: Optimizer) -> None:
        # Optimizer.__init__ is not called: the wrapped optimizer owns groups, state and defaults.
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        for name in (
            "step_pre",
            "step_post",
            "state_dict_pre",
            "state_dict_post",
            "load_state_dict_pre",
            "load_state_dict_post",
        ):
            setattr(self, f"_optimizer_{name}_hooks", OrderedDict())
        self._patch_step_function()

    # ----------------------------------------------------------------- subclass hooks
    def _params_changed(self) -> None:
        """A param group was added."""

    def _drop_pending(self) -> None:
        """``zero_grad`` was called: forget any unfinished step."""

    def _check_ready(self) -> None:
        """Raise if ``step`` must not run now."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _check_extra_state(self, extra: dict[str, Any]) -> None:
        """Raise if ``extra`` cannot be loaded (called before anything is restored)."""

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    # ----------------------------------------------------------------- the optimizer surface
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the wrapped optimizer (see ``torch.optim.Optimizer``).

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            >>> opt = PCGrad(torch.optim.SGD(a.parameters(), lr=0.1))
            >>> opt.add_param_group({"params": b.parameters(), "lr": 0.01})
            >>> len(opt.param_groups)
            2
        """
        self.optimizer.add_param_group(param_group)
        self._params_changed()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients, as the wrapped optimizer does, and drop any unfinished step.

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> opt = PCGrad(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1))
            >>> opt.zero_grad()
        """
        self._drop_pending()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):  # type: ignore[override]
        """Apply the wrapped optimizer's update to the gradients :meth:`backward` left.

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> lin = torch.nn.Linear(2, 1)
            >>> opt = PCGrad(torch.optim.SGD(lin.parameters(), lr=0.1))
            >>> _ = opt.backward([lin(torch.ones(1, 2)).sum()])
            >>> opt.step()
        """
        self._check_ready()
        return self.optimizer.step(closure)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state plus the wrapper's own (``"multitask"`` or ``"pcgrad"``).

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> opt = PCGrad(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1), seed=3)
            >>> sorted(opt.state_dict())
            ['param_groups', 'pcgrad', 'state']
        """
        state = self.optimizer.state_dict()
        state[self._state_key] = self._extra_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a plain optimizer state dict is accepted too).

        Example:
            >>> import torch
            >>> from mtlkit import PCGrad
            >>> opt = PCGrad(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1), seed=3)
            >>> opt.load_state_dict(opt.state_dict())
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop(self._state_key, None)
        if extra is not None:
            self._check_extra_state(extra)
        self.optimizer.load_state_dict(state_dict)
        if extra is not None:
            self._load_extra_state(extra)
