"""Validation of PCGrad's inputs: parameter lists and named task losses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch


def unique_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"shared_params: expected tensors, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def as_named_losses(
    losses: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(losses, Mapping):
        names, tensors = [str(k) for k in losses], list(losses.values())
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        names, tensors = [str(i) for i in range(len(losses))], list(losses)
    else:
        raise TypeError(
            "losses: expected a sequence or a mapping of scalar tensors, "
            f"got {type(losses).__name__}"
        )
    if not tensors:
        raise ValueError("losses: need at least one task loss")
    for name, loss in zip(names, tensors, strict=True):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"losses[{name!r}]: expected a tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{name!r}]: expected a scalar loss, got shape {tuple(loss.shape)}"
            )
    return names, tensors


def check_finite(names: list[str], tensors: list[torch.Tensor]) -> None:
    values = torch.stack([t.detach().reshape(()).float() for t in tensors]).cpu()
    for name, value in zip(names, values.tolist(), strict=True):
        if not math.isfinite(value):
            raise ValueError(f"losses[{name!r}]: the loss of task {name!r} is not finite ({value})")
