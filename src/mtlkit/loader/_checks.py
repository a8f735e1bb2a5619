"""Private: validation of :class:`mtlkit.loader.MultiTaskLoader` arguments.

Every message reads ``"<argument>: expected <what>, got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

from mtlkit.loader._mode_base import LoaderMode
from mtlkit.loader._modes import MODES, probabilities
from mtlkit.loader._run import LoaderSpec


def checked_spec(
    loaders: Any,
    mode: Any,
    seed: Any,
    temperature: Any,
    weights: Any,
    steps_per_epoch: Any,
    carry_over: Any,
) -> tuple[LoaderSpec, dict[str, float] | None]:
    """The validated configuration of a MultiTaskLoader, and its task probabilities."""
    mode_cls = check_mode(mode, MODES)
    names, inner = check_loaders(loaders)
    seed = check_seed(seed)
    sizes = tuple(loader_size(n, dl) for n, dl in zip(names, inner, strict=True))
    check_sizes(mode_cls, names, sizes, steps_per_epoch, bool(carry_over))
    raw = mode_cls.draw_weights(
        list(sizes), check_temperature(mode, temperature), check_weights(mode, weights, names)
    )
    spec = LoaderSpec(
        mode=mode,
        names=names,
        loaders=inner,
        sizes=sizes,
        seed=seed,
        steps=check_steps(mode_cls, steps_per_epoch, sizes),
        carry_over=bool(carry_over),
        draw_weights=None if raw is None else tuple(raw),
        mode_cls=mode_cls,
    )
    probs = probabilities(raw)
    return spec, None if probs is None else dict(zip(names, probs, strict=True))


def check_mode(mode: Any, registry: Mapping[str, type[LoaderMode]]) -> type[LoaderMode]:
    """The registry class of ``mode``."""
    if not isinstance(mode, str) or mode not in registry:
        raise ValueError(f"mode: expected one of {list(registry)}, got {mode!r}")
    return registry[mode]


def check_loaders(loaders: Any) -> tuple[tuple[str, ...], tuple[Iterable, ...]]:
    """The task names and loaders of ``loaders``, in order."""
    if not isinstance(loaders, Mapping):
        raise TypeError(
            f"loaders: expected a Mapping[str, Iterable], got {type(loaders).__name__}"
        )
    if len(loaders) == 0:
        raise ValueError("loaders: expected at least one task, got an empty mapping")
    for name, loader in loaders.items():
        if not isinstance(name, str):
            raise TypeError(f"loaders: expected task names (str) as keys, got {name!r}")
        if not isinstance(loader, Iterable):
            raise TypeError(
                f"loaders[{name!r}]: expected an iterable, got {type(loader).__name__}"
            )
    return tuple(loaders), tuple(loaders.values())


def loader_size(name: str, loader: Iterable) -> int | None:
    """``len(loader)``, ``None`` when it has none; an empty loader is an error."""
    try:
        size = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if size == 0:
        raise ValueError(f"loaders[{name!r}]: expected at least one batch, got an empty loader")
    return int(size)


def check_sizes(
    mode: type[LoaderMode],
    names: tuple[str, ...],
    sizes: tuple[int | None, ...],
    steps_per_epoch: int | None,
    carry_over: bool,
) -> None:
    """Every loader has ``len()`` where the mode (or ``carry_over``) needs it."""
    unsized = [n for n, s in zip(names, sizes, strict=True) if s is None]
    if not unsized:
        return
    if mode.needs_sizes or (steps_per_epoch is None and mode.cycles):
        raise ValueError(
            f"loaders: expected len() of every loader for mode={mode.name!r} (pass "
            f"steps_per_epoch where the mode allows it), got loaders without len(): {unsized}"
        )
    if carry_over:
        raise ValueError(
            "loaders: expected len() of every loader with carry_over=True (a carried pass "
            f"resumes at a position computed from its length), got loaders without len(): "
            f"{unsized}"
        )


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    return seed


def check_temperature(mode: str, temperature: Any) -> float | None:
    if mode != "temperature":
        if temperature is not None:
            raise ValueError(
                f"temperature: expected None (only mode='temperature' uses it, not "
                f"{mode!r}), got {temperature!r}"
            )
        return None
    t = 2.0 if temperature is None else temperature
    if not _finite_real(t) or t <= 0:
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    return float(t)


def check_weights(mode: str, weights: Any, names: tuple[str, ...]) -> list[float] | None:
    if mode != "weighted":
        if weights is not None:
            raise ValueError(
                f"weights: expected None (only mode='weighted' uses weights, not {mode!r}), "
                f"got {weights!r}"
            )
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights: expected {{task: weight}} for mode='weighted', got {weights!r}")
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise ValueError(f"weights: expected the tasks {list(names)}, got unknown tasks {unknown}")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(
            f"weights: expected a weight for every task (0 never draws one), missing {missing}"
        )
    out = []
    for n in names:
        w = weights[n]
        if not _finite_real(w) or w < 0:
            raise ValueError(f"weights[{n!r}]: expected a finite number >= 0, got {w!r}")
        out.append(float(w))
    if not any(w > 0 for w in out):
        raise ValueError(
            "weights: expected at least one weight > 0 (they must not all be 0), "
            f"got {dict(weights)}"
        )
    return out


def check_steps(mode: type[LoaderMode], steps: Any, sizes: tuple[int | None, ...]) -> int | None:
    """The epoch length: ``steps_per_epoch`` or the mode's default (``None``: unknown)."""
    if steps is None:
        if any(s is None for s in sizes):
            return None
        return mode.default_steps([int(s) for s in sizes])  # type: ignore[arg-type]
    if not mode.cycles:
        raise ValueError(
            f"steps_per_epoch: expected None for mode={mode.name!r} (its epoch is one pass of "
            f"every loader), got {steps!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps_per_epoch: expected an int > 0, got {steps!r}")
    return steps


def check_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
    return epoch


def _finite_real(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)
