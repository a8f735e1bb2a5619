"""Private: the ``state_dict`` layout of a MultiTaskLoader, its checks and its upgrades.

Version 2 (this one) added ``carry_over``; a version 1 state (written before it existed, when
every loader restarted its tasks each epoch) loads as ``carry_over=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VERSION = 2
"""Version of the ``state_dict`` layout."""

_REQUIRED = ("version", "mode", "tasks", "seed", "epoch", "step", "schedule", "loaders")


def copy_state(obj: Any) -> Any:
    """A deep copy of the JSON-like parts (dicts and lists); other leaves are shared."""
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_state(v) for v in obj]
    return obj


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    version = state["version"]
    if version == 1:
        state = {**state, "version": 2, "carry_over": False}
    elif version != VERSION:
        raise ValueError(
            f"state_dict['version']: expected 1 or {VERSION} (a MultiTaskLoader state), "
            f"got {version!r}"
        )
    return state


def _check_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected an int >= 0, got {value!r}")
    return value


def checked_state(state_dict: Any, expected: Mapping[str, Any]) -> dict[str, Any]:
    """A validated, upgraded copy of ``state_dict`` for a loader whose configuration is
    ``expected`` (``mode``, ``tasks``, ``seed``, ``steps``, ``carry_over``)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a Mapping, got {type(state_dict).__name__}")
    missing = sorted(set(_REQUIRED) - set(state_dict))
    if missing:
        raise ValueError(
            f"state_dict: expected a MultiTaskLoader state, got one that lacks keys {missing}"
        )
    state = _upgrade(copy_state(dict(state_dict)))
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(
                f"state_dict[{key!r}]: expected {value!r} (this loader's), got {state.get(key)!r}"
            )
    loaders = state["loaders"]
    tasks = list(expected["tasks"])
    if not isinstance(loaders, Mapping) or set(loaders) != set(tasks):
        raise ValueError(
            f"state_dict['loaders']: expected a position for each of the tasks {tasks}, "
            f"got {loaders!r}"
        )
    _check_int(state["epoch"], "state_dict['epoch']")
    _check_int(state["step"], "state_dict['step']")
    _check_int(state.get("task", 0), "state_dict['task']")
    steps = expected["steps"]
    if steps is not None and state["step"] > steps:
        raise ValueError(f"state_dict['step']: expected at most {steps}, got {state['step']}")
    for name in tasks:
        pos = loaders[name]
        where = f"state_dict['loaders'][{name!r}]"
        if not isinstance(pos, Mapping) or not {"cycle", "consumed"} <= set(pos):
            raise ValueError(f"{where}: expected {{'cycle', 'consumed', 'state'}}, got {pos!r}")
        _check_int(pos["cycle"], f"{where}['cycle']")
        _check_int(pos["consumed"], f"{where}['consumed']")
    return state
