"""Validation of SMART's options, shared by the functional form and the modules."""

from __future__ import annotations

import math
from typing import Literal

import torch

Kind = Literal["classification", "binary", "regression"]
Norm = Literal["linf", "l2"]
KINDS: tuple[str, ...] = ("classification", "binary", "regression")
NORMS: tuple[str, ...] = ("linf", "l2")


def check_kind(kind: object) -> None:
    """``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def check_number(name: str, value: object, *, positive: bool) -> float:
    """A finite real number, ``> 0`` when ``positive`` else ``>= 0``; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    bound = "> 0" if positive else ">= 0"
    if not math.isfinite(value) or not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return float(value)


def check_attack(
    *,
    epsilon: object,
    noise_std: object,
    step_size: object,
    num_steps: object,
    norm: object,
    project: object,
    generator: object,
) -> None:
    """The options of SMART's inner maximization (:func:`mtlkit.smart.functional.smart_loss`)."""
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    check_number("epsilon", epsilon, positive=True)
    check_number("noise_std", noise_std, positive=False)
    check_number("step_size", step_size, positive=True)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps: expected an int, got {type(num_steps).__name__} {num_steps!r}")
    if num_steps < 0:
        raise ValueError(f"num_steps: expected an int >= 0, got {num_steps}")
    if not isinstance(project, bool):
        raise TypeError(f"project: expected a bool, got {type(project).__name__} {project!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
        )
