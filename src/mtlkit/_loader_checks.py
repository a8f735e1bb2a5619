"""Private: validation of :class:`mtlkit.MultiTaskLoader` arguments."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ._loader_modes import ModeSpec


def loader_size(name: Any, loader: Any) -> int | None:
    if not isinstance(name, str):
        raise TypeError(f"loaders keys must be task names (str), got {name!r}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"loaders[{name!r}] must be iterable, got {type(loader).__name__}")
    try:
        size = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if size == 0:
        raise ValueError(f"loaders[{name!r}] is empty (len 0)")
    return int(size)


def check_temperature(mode: str, temperature: float | None) -> float | None:
    if mode != "temperature":
        if temperature is not None:
            raise ValueError(f"temperature is only used by mode='temperature', not {mode!r}")
        return None
    t = 2.0 if temperature is None else temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(t)


def check_weights(
    mode: str, weights: Mapping[str, float] | None, names: tuple[str, ...]
) -> list[float] | None:
    if mode != "weighted":
        if weights is not None:
            raise ValueError(f"weights are only used by mode='weighted', not {mode!r}")
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"mode='weighted' needs weights={{task: weight}}, got {weights!r}")
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise ValueError(f"weights name unknown tasks {unknown}; tasks are {list(names)}")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"weights must cover every task (0 to never draw one); missing {missing}")
    out = []
    for n in names:
        w = weights[n]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{n!r}] must be a finite number >= 0, got {w!r}")
        out.append(float(w))
    if sum(out) <= 0:
        raise ValueError("weights must not all be 0")
    return out


def check_steps(
    mode: str, steps: int | None, spec: ModeSpec, sizes: list[int | None]
) -> int | None:
    if steps is None:
        return spec.default_steps(sizes)
    if not spec.cycles:
        raise ValueError(f"steps_per_epoch does not apply to mode={mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps_per_epoch must be an int > 0, got {steps!r}")
    return steps


def copy_state(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_state(v) for v in obj]
    return obj
