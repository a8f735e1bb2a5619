"""A step with a loss-based weighting: one backward of the weighted loss, no per-task buffer."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from mtlkit.surgery._stats import SurgeryStats
from mtlkit.surgery._sync import SurgerySync
from mtlkit.weighting import LossWeighting


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    device = tensors[0].device
    return torch.stack([t.reshape(()).to(device, dtype) for t in tensors])


def loss_step(
    weighting: LossWeighting,
    names: list[str],
    tensors: list[torch.Tensor],
    params: list[torch.Tensor],
    mean: bool,
    sync: SurgerySync,
    retain_graph: bool | None,
    scaler: torch.amp.GradScaler | None = None,
) -> SurgeryStats:
    """Backpropagate ``weighting(losses)`` (divided by T for ``mean``) once.

    Args:
        weighting: The loss weighting.
        names: Task names, in order.
        tensors: The task losses.
        params: The optimizer's trainable parameters (averaged over ranks afterwards).
        mean: ``reduction="mean"``.
        sync: The optimizer's synchroniser.
        retain_graph: Passed to ``backward``.
        scaler: Multiplies the weighted loss before the backward (the weights are unscaled).

    Returns:
        The stats; ``weights`` are the derivatives of the weighted loss by each loss.
    """
    losses = _stack(tensors)
    loss_ok = torch.isfinite(losses.detach())
    inputs = sync.global_losses(names, losses)
    captured: list[torch.Tensor] = []
    if inputs.requires_grad:
        inputs.register_hook(captured.append)
    total = weighting(inputs)
    if not isinstance(total, torch.Tensor) or total.numel() != 1:
        raise TypeError(
            f"weighting: expected {type(weighting).__name__} to return a scalar loss, got "
            f"{getattr(total, 'shape', type(total).__name__)}"
        )
    if mean:
        total = total / len(names)
    scale = None if scaler is None else scaler.scale(torch.ones((), device=losses.device))
    if total.requires_grad:
        (total if scale is None else total * scale).reshape(()).backward(
            retain_graph=retain_graph)
    sync.share_loss_gradients(names, params)
    weights = captured[0] if captured else torch.zeros_like(losses)
    if scale is not None:
        weights = weights / scale
    host = torch.cat([loss_ok.to(torch.float64), weights.detach().to(torch.float64)]).cpu()
    ok = (host[: len(names)] > 0.5).tolist()  # the step's one host synchronisation is above
    bad = tuple(n for n, good in zip(names, ok, strict=True) if not good)
    if bad:  # a GradScaler sees NaN and skips the step; step() without one raises
        for p in params:
            if p.grad is not None:
                p.grad.fill_(float("nan"))
    return SurgeryStats(tuple(names), None, None, host[len(names) :].float(), not bad,
                        sync.sent_bytes, bad)
