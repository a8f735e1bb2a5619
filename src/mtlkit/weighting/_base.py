"""The two kinds of weighting: of the Gramian (gradient-based) and of the losses (loss-based).

A :class:`Weighting` maps the T x T Gramian ``G = J J^T`` of the task gradients (the rows of
``J``) to T weights ``w``; the combined gradient is ``w @ J``. Every gradient-based method of
this package (PCGrad, UPGrad, MGDA, CAGrad, Nash-MTL, ...) is such a map, so one core computes
``J``, ``G`` and ``w @ J`` once for all of them (:class:`mtlkit.MultiTaskOptimizer`).

A :class:`LossWeighting` needs no per-task gradient: it maps the T losses to the one loss that
is backpropagated (uncertainty weighting, DWA, FAMO).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def check_gramian(gramian: object, name: str) -> torch.Tensor:
    """``gramian`` if it is a finite, symmetric T x T floating tensor, else ``ValueError``.

    Reads the tensor on the host (one synchronisation): for user calls, not the optimizer's
    hot path, which checks finiteness on the device instead.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import check_gramian
        >>> check_gramian(torch.eye(2), "Mean").shape
        torch.Size([2, 2])
    """
    if not isinstance(gramian, torch.Tensor) or not gramian.is_floating_point():
        raise ValueError(f"{name}: gramian: expected a floating-point tensor, got {gramian!r}")
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(
            f"{name}: gramian: expected a square T x T matrix with T >= 1, got shape "
            f"{tuple(gramian.shape)}"
        )
    g = gramian.detach().double()
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"{name}: gramian: expected finite entries, got {gramian}")
    scale = g.abs().max()
    if bool((g - g.T).abs().max() > 1e-6 * scale):
        raise ValueError(f"{name}: gramian: expected a symmetric matrix, got {gramian}")
    return gramian


class Weighting:
    """Base class of the gradient-based weightings: the Gramian in, T weights out.

    Subclasses implement :meth:`weights`; calling an instance checks the Gramian first
    (square, symmetric, finite: ``ValueError`` naming the weighting) and then calls it.
    Stateful methods (those that keep moving averages or a generator) override
    :meth:`reset`, :meth:`state_dict` and :meth:`load_state_dict`.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import Weighting
        >>> class Half(Weighting):
        ...     def weights(self, gramian):
        ...         return torch.full((gramian.shape[0],), 0.5, dtype=gramian.dtype,
        ...                           device=gramian.device)
        >>> Half()(torch.eye(3))
        tensor([0.5000, 0.5000, 0.5000])
    """

    requires_gramian = True
    """Whether the optimizer must build the per-task gradients and their Gramian."""

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        return self.weights(check_gramian(gramian, type(self).__name__))

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """The T weights for ``gramian``, unchecked, on the Gramian's device.

        The optimizer calls this directly on its hot path: it must not read tensors on the
        host (no ``.item()``, ``.tolist()``, ``bool(tensor)``), so that a GPU step synchronises
        once, when the optimizer reads the weights and the finiteness flag together.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept between steps (no-op for stateless methods)."""

    def state_dict(self) -> dict[str, Any]:
        """The state kept between steps, for checkpoints (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(
                f"{type(self).__name__}: state: expected an empty state, got keys {sorted(state)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossWeighting(torch.nn.Module):
    """Base class of the loss-based weightings: the T task losses in, one loss out.

    :meth:`forward` takes the losses stacked in a tensor of shape ``(T,)`` and returns the
    scalar loss to backpropagate. A method with learnable parameters (uncertainty weighting)
    registers them as ``nn.Parameter``: the user passes ``weighting.parameters()`` to the
    optimizer, and :class:`mtlkit.MultiTaskOptimizer` refuses a weighting whose parameters
    the optimizer does not own. ``state_dict`` is :class:`torch.nn.Module`'s.

    Example:
        >>> import torch
        >>> from mtlkit.weighting import LossWeighting
        >>> class Plain(LossWeighting):
        ...     def forward(self, losses):
        ...         return losses.sum()
        >>> Plain()(torch.tensor([1.0, 2.0]))
        tensor(3.)
    """

    requires_gramian = False

    def forward(self, losses: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the state kept between steps (no-op unless overridden)."""
