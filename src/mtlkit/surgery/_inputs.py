"""Validation of the multi-task optimizer's inputs: parameters, task losses, the weighting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from mtlkit import weighting as weightings

AnyWeighting = weightings.Weighting | weightings.LossWeighting


def resolve_weighting(weighting: object) -> AnyWeighting:
    """An instance of a weighting, or one built by name with ``mtlkit.weighting.by_name``."""
    if isinstance(weighting, str):
        by_name = getattr(weightings, "by_name", None)
        if by_name is None:
            raise TypeError(
                "weighting: expected a Weighting or LossWeighting instance (this version has "
                f"no mtlkit.weighting.by_name), got the name {weighting!r}"
            )
        try:
            return by_name(weighting)
        except TypeError as exc:  # a loss weighting needs the number of tasks
            raise TypeError(
                f"weighting: expected a name that needs no arguments, got {weighting!r} ({exc});"
                f" pass an instance, e.g. mtlkit.weighting.by_name({weighting!r}, num_tasks=T)"
            ) from exc
    if isinstance(weighting, (weightings.Weighting, weightings.LossWeighting)):
        return weighting
    if isinstance(weighting, type):
        raise TypeError(f"weighting: expected an instance, got the class {weighting.__name__}")
    raise TypeError(
        "weighting: expected a mtlkit.weighting.Weighting, a LossWeighting or a name, "
        f"got {type(weighting).__name__}"
    )


def unique_params(params: Iterable[Any], argument: str = "shared_params") -> list[torch.Tensor]:
    """``params`` without repeats (by identity), checking that each one is a tensor."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            f"{argument}: expected an iterable of parameters, got a single tensor of shape "
            f"{tuple(params.shape)}"
        )
    seen: set[int] = set()
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{argument}[{i}]: expected a tensor, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def group_param_ids(param_groups: Sequence[Mapping[str, Any]]) -> set[int]:
    return {id(p) for g in param_groups for p in g["params"]}


def check_shared_params(shared: list[torch.Tensor], param_groups: Sequence[Mapping]) -> None:
    """Explicit shared parameters: at least one, all in the optimizer, all trainable."""
    if not shared:
        raise ValueError(
            "shared_params: expected at least one parameter (None detects them in each step), "
            "got an empty iterable"
        )
    in_groups = group_param_ids(param_groups)
    for i, p in enumerate(shared):
        if id(p) not in in_groups:
            raise ValueError(
                f"shared_params[{i}]: expected a parameter of the optimizer's param groups, "
                f"got one of shape {tuple(p.shape)} outside them (it would never be updated)"
            )
        if not p.requires_grad:
            raise ValueError(
                f"shared_params[{i}]: expected a parameter that requires grad, got one of "
                f"shape {tuple(p.shape)} with requires_grad=False"
            )


def check_parameters(weighting: AnyWeighting, explicit: list[torch.Tensor] | None,
                     param_groups: Sequence[Mapping]) -> None:
    """Explicit shared parameters (either kind); a loss weighting's own are owned."""
    if explicit is not None:
        check_shared_params(explicit, param_groups)
    if not weighting.requires_gramian:
        check_owned(weighting, param_groups)


def check_owned(weighting: torch.nn.Module, param_groups: Sequence[Mapping]) -> None:
    """A loss weighting's own parameters must be updated by the wrapped optimizer."""
    in_groups = group_param_ids(param_groups)
    outside = [name for name, p in weighting.named_parameters()
               if p.requires_grad and id(p) not in in_groups]
    if outside:
        raise ValueError(
            f"weighting: expected a {type(weighting).__name__} whose parameters the optimizer "
            f"owns (pass weighting.parameters() to the optimizer), got {outside} outside its "
            "param groups"
        )


def per_task(values: object, argument: str, expected: str) -> tuple[list[str], list[Any]]:
    """Task names and values from a mapping ``{task: value}`` or a sequence (names ``"0"``,
    ``"1"``...); anything else raises ``TypeError("<argument>: expected <expected>, got ...")``.
    """
    if isinstance(values, Mapping):
        return [str(k) for k in values], list(values.values())
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        return [str(i) for i in range(len(values))], list(values)
    raise TypeError(f"{argument}: expected {expected}, got {type(values).__name__}")


def as_named_losses(
    losses: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
) -> tuple[list[str], list[torch.Tensor]]:
    """Task names and scalar losses from a sequence (names ``"0"``, ``"1"``...) or a mapping."""
    names, tensors = per_task(losses, "losses", "a sequence or a mapping of scalar tensors")
    if not tensors:
        raise ValueError("losses: expected at least one task loss, got none")
    if len(set(names)) != len(names):
        raise ValueError(f"losses: expected distinct task names, got {names}")
    for name, loss in zip(names, tensors, strict=True):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"losses[{name!r}]: expected a tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{name!r}]: expected a scalar loss, got shape {tuple(loss.shape)}"
            )
        if not loss.is_floating_point():
            raise TypeError(f"losses[{name!r}]: expected a floating-point loss, got {loss.dtype}")
    return names, tensors


def finite_flag(loss: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Whether ``loss`` is finite, as a bool tensor on ``device`` (no host read)."""
    return torch.isfinite(loss.detach().reshape(())).to(device, non_blocking=True)
