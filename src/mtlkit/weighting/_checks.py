"""Argument checks shared by the weightings (clear ``ValueError``s, no host reads)."""

from __future__ import annotations

import math

import torch


def positive_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name}: expected an integer >= 1, got {value!r}")
    return value


def number(owner: str, name: str, value: object, *, low: float = 0.0,
           strict: bool = False) -> float:
    """``value`` as a float if it is a finite real ``>= low`` (``> low`` when ``strict``)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{owner}: {name}: expected a finite number {relation} {low}, got "
                         f"{value!r}")
    return float(value)


def optional_tasks(owner: str, num_tasks: object) -> int | None:
    return None if num_tasks is None else positive_int(owner, "num_tasks", num_tasks)


def task_losses(owner: str, losses: object, num_tasks: int | None) -> torch.Tensor:
    """``losses`` if it is a floating tensor of shape ``(num_tasks,)`` (any ``(T,)``, T >= 1,
    when ``num_tasks`` is None)."""
    if not isinstance(losses, torch.Tensor) or not losses.is_floating_point():
        raise ValueError(f"{owner}: losses: expected a floating-point tensor, got {losses!r}")
    if num_tasks is None and losses.ndim == 1 and len(losses) >= 1:
        return losses
    if losses.shape != (num_tasks,):
        expected = "T" if num_tasks is None else num_tasks
        raise ValueError(f"{owner}: losses: expected shape ({expected},) (one loss per task), "
                         f"got {tuple(losses.shape)}")
    return losses
