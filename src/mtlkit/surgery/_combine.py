"""From the task gradients to the combined gradient, reading the device once.

The step's one host synchronisation is :func:`_read`: the Gramian, the loss finiteness flags
and (for a weighting that runs on the device) the weights travel to the host together. A
weighting marked ``on_host`` (PCGrad's visiting loop) is given the host copy of the Gramian
instead, so it reads nothing itself. Everything before the read is queued on the device.

Only when something is not finite does the step read again: it then tells a non-finite loss
(every managed gradient set to NaN, so a ``GradScaler`` skips the step) from a non-finite
gradient (the plain sum written, overflow included) from a Gramian that overflowed its working
precision although every gradient is finite (recomputed in float64, then combined).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtlkit.surgery._buffer import TaskGradients
from mtlkit.surgery._sync import SurgerySync
from mtlkit.weighting import Weighting

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the host learned about a step (host tensors)."""

    gramian: torch.Tensor
    weights: torch.Tensor
    finite: bool
    nonfinite: tuple[str, ...] = ()
    bad_losses: bool = False
    """Whether ``nonfinite`` names tasks whose loss (not only the gradient) was not finite."""


@dataclass(frozen=True)
class _Seen:
    gramian: torch.Tensor
    loss_ok: list[bool]
    weights: torch.Tensor | None

    @property
    def finite(self) -> bool:
        return all(self.loss_ok) and bool(torch.isfinite(self.gramian).all())


def _read(gramian: torch.Tensor, loss_ok: torch.Tensor, weights: torch.Tensor | None) -> _Seen:
    """One device-to-host copy of everything the host needs to finish the step."""
    t = gramian.shape[0]
    parts = [gramian.reshape(-1), loss_ok.to(torch.float64)]
    if weights is not None:
        parts.append(weights)
    host = torch.cat(parts).cpu()
    return _Seen(host[: t * t].view(t, t), (host[t * t : t * t + t] > 0.5).tolist(),
                 None if weights is None else host[t * t + t :])


def _safe(weights: torch.Tensor, gramian: torch.Tensor) -> torch.Tensor:
    """A task whose gradient is zero contributes nothing, even where its weight is not finite."""
    return torch.where(torch.isfinite(weights) | (gramian.diagonal() > 0), weights, 0.0)


class Combiner:
    """Runs a :class:`~mtlkit.weighting.Weighting` on one step's task gradients.

    Args:
        weighting: The Gramian weighting.
        mean: Divide the weights by T (``reduction="mean"``).
    """

    def __init__(self, weighting: Weighting, mean: bool) -> None:
        self.weighting = weighting
        self.mean = mean
        self.on_host = bool(getattr(weighting, "on_host", False))
        self._unscale: torch.Tensor | None = None
        self._stateful = (isinstance(weighting, Weighting)
                          and type(weighting).state_dict is not Weighting.state_dict)

    def _weights(self, gramian: torch.Tensor) -> torch.Tensor:
        t = gramian.shape[0]
        weights = self.weighting.weights(gramian)
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (t,):
            raise TypeError(
                f"{self.weighting!r}: weights: expected a tensor of shape ({t},), got "
                f"{getattr(weights, 'shape', type(weights).__name__)}"
            )
        weights = weights.to(gramian.device, torch.float64)
        return _safe(weights / t if self.mean else weights, gramian)

    def __call__(self, grads: TaskGradients, shared: Sequence[bool], tasks: Sequence[str],
                 loss_ok: torch.Tensor, accumulate: bool, sync: SurgerySync,
                 loss_scale: torch.Tensor | None = None) -> Outcome:
        """Write the combination into ``grads``' combined buffers and say what was seen.

        ``loss_scale``: the factor the losses were multiplied by (a ``GradScaler``'s scale);
        the weighting then sees the Gramian of the unscaled gradients.
        """
        t = len(tasks)
        self._unscale = None if loss_scale is None else loss_scale.to(grads.device).double() ** -2
        gramian = self._gramian(grads, shared, t, exact=False)
        weights = snapshot = None
        if not self.on_host:  # queue the weights and the combination before the one read
            if self._stateful:  # restored if the step turns out not finite
                snapshot = copy.deepcopy(self.weighting.state_dict())
            ok = torch.isfinite(gramian).all()
            eye = torch.eye(t, dtype=gramian.dtype, device=gramian.device)
            weights = sync.share_weights(self._weights(torch.where(ok, gramian, eye)))
            grads.write(weights, shared, t, accumulate)
        seen = _read(gramian, loss_ok, weights)  # the step's one host synchronisation
        if not seen.finite:
            if snapshot is not None:
                self.weighting.load_state_dict(snapshot)
            return self._recover(grads, shared, tasks, seen, accumulate, sync)
        if self.on_host:
            return self._finish_on_host(grads, shared, t, seen.gramian, accumulate, sync)
        return self._checked(Outcome(seen.gramian, seen.weights, True))

    def _gramian(self, grads: TaskGradients, shared: Sequence[bool], t: int,
                 exact: bool) -> torch.Tensor:
        gramian = grads.gramian(shared, t, exact=exact)
        return gramian if self._unscale is None else gramian * self._unscale

    def _finish_on_host(self, grads: TaskGradients, shared: Sequence[bool], t: int,
                        gramian: torch.Tensor, accumulate: bool, sync: SurgerySync) -> Outcome:
        local = self._weights(gramian)
        on_device = local.to(grads.device)
        weights = sync.share_weights(on_device)
        grads.write(weights, shared, t, accumulate)
        host = local if weights is on_device else weights.cpu()  # rank 0's, under "tasks"
        return self._checked(Outcome(gramian, host, True))

    def _checked(self, outcome: Outcome) -> Outcome:
        if not bool(torch.isfinite(outcome.weights).all()):
            raise RuntimeError(
                f"{self.weighting!r}: weights: expected finite weights for a finite Gramian, "
                f"got {outcome.weights.tolist()} for {outcome.gramian.tolist()}"
            )
        return outcome

    def _recover(self, grads: TaskGradients, shared: Sequence[bool], tasks: Sequence[str],
                 seen: _Seen, accumulate: bool, sync: SurgerySync) -> Outcome:
        """Something was not finite: a loss, a gradient, or only the working Gramian."""
        t = len(tasks)
        ones = torch.ones(t, dtype=torch.float64)
        if not all(seen.loss_ok):
            grads.poison()
            bad = tuple(n for n, ok in zip(tasks, seen.loss_ok, strict=True) if not ok)
            return Outcome(seen.gramian, ones, False, bad, bad_losses=True)
        rows_ok = grads.rows_finite(shared, t).tolist()
        gramian = self._gramian(grads, shared, t, exact=True) if all(rows_ok) else None
        if gramian is None or not bool(torch.isfinite(gramian).all()):
            if all(rows_ok):
                logger.warning("the Gramian overflows float64 although every gradient is finite:"
                               " writing the plain sum")
            grads.write(None, shared, t, accumulate)
            bad = tuple(n for n, ok in zip(tasks, rows_ok, strict=True) if not ok)
            return Outcome(seen.gramian, ones, False, bad)
        weights = sync.share_weights(self._weights(gramian))
        grads.write(weights, shared, t, accumulate)
        return self._checked(Outcome(gramian.cpu(), weights.cpu(), True))
