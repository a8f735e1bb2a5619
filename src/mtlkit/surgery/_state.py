"""The multi-task optimizers' own checkpoint state: its format version, the buffer layout of
automatic shared-parameter detection, and generator states in whatever tensor they come back.

Format 2 added ``"version"`` and ``"auto_shared"``; a format-1 state (neither key) loads with a
fresh run's layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mtlkit.surgery._inputs import unique_params
from mtlkit.weighting._seeded import host_generator

STATE_VERSION = 2


def check_version(extra: Mapping[str, Any], key: str) -> None:
    version = extra.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= (
            STATE_VERSION):
        raise ValueError(f"state_dict[{key!r}]['version']: expected a state format up to "
                         f"{STATE_VERSION}, got {version!r}")


def layout_state(params: Sequence[torch.Tensor], auto_shared: set[int]) -> list[int]:
    """Positions in ``params`` (all the optimizer's, in ``param_groups`` order) of the
    parameters detected as shared in the last step: the next step's layout puts them first."""
    return [i for i, p in enumerate(params) if id(p) in auto_shared]


def check_layout(extra: Mapping[str, Any], key: str, num_params: int) -> None:
    indices = extra.get("auto_shared", [])
    where = f"state_dict[{key!r}]['auto_shared']"
    if not isinstance(indices, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"{where}: expected a list of parameter indices, got {indices!r}")
    if len(set(indices)) != len(indices) or not all(0 <= i < num_params for i in indices):
        raise ValueError(f"{where}: expected distinct indices in [0, {num_params}), "
                         f"got {list(indices)!r}")


def load_layout(extra: Mapping[str, Any], params: Sequence[torch.Tensor]) -> set[int]:
    """The ids of the parameters :func:`layout_state` named (empty for a format-1 state)."""
    return {id(params[i]) for i in extra.get("auto_shared", [])}


def with_host_generator(state: Any, where: str) -> Any:
    """``state`` with its ``"generator"`` tensor (the library weightings' key) made loadable."""
    if isinstance(state, Mapping) and isinstance(state.get("generator"), torch.Tensor):
        return {**state, "generator": host_generator(state["generator"], f"{where}['generator']")}
    return state


class MultiTaskState:
    """The ``state_dict`` hooks of :class:`~mtlkit.MultiTaskOptimizer` (see ``_WrappedOptimizer``):
    the weighting's name and state, the reduction, the format version and the layout."""

    def _extra_state(self) -> dict[str, Any]:
        return {
            "weighting": type(self.weighting).__name__,
            "reduction": self.reduction,
            "weighting_state": self.weighting.state_dict(),
            **self._layout_state(),
        }

    def _check_extra_state(self, extra: Mapping[str, Any]) -> None:
        key = self._state_key
        for field, mine in (("weighting", type(self.weighting).__name__),
                            ("reduction", self.reduction)):
            if field in extra and extra[field] != mine:
                raise ValueError(
                    f"state_dict[{key!r}][{field!r}]: expected {mine!r} (this optimizer's), "
                    f"got {extra[field]!r}"
                )
        self._check_layout_state(extra)
        with_host_generator(extra.get("weighting_state"), f"state_dict[{key!r}]['weighting_state']")

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        where = f"state_dict[{self._state_key!r}]['weighting_state']"
        self.weighting.load_state_dict(with_host_generator(extra["weighting_state"], where))
        self._load_layout_state(extra)

    # The buffer layout of automatic detection (shared parameters first, as the last step found
    # them), so that a resumed step sums the Gramian in the order the uninterrupted one does.
    def _layout_state(self) -> dict[str, Any]:
        auto = set() if self._explicit is not None else self._steps.auto_shared
        return {"version": STATE_VERSION, "auto_shared": layout_state(self._all_params(), auto)}

    def _check_layout_state(self, extra: Mapping[str, Any]) -> None:
        check_version(extra, self._state_key)
        check_layout(extra, self._state_key, len(self._all_params()))

    def _load_layout_state(self, extra: Mapping[str, Any]) -> None:
        if self._explicit is None:
            self._steps.auto_shared = load_layout(extra, self._all_params())

    def _all_params(self) -> list[torch.Tensor]:
        return unique_params(p for g in self.param_groups for p in g["params"])
