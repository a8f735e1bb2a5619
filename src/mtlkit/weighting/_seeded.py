"""The seeded generator of the random weightings (PCGrad, GradVac, Random): seeding, ``reset``
and the ``{"generator": ...}`` state, with a state accepted from any device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def host_generator(value: Any, where: str) -> torch.Tensor:
    """A generator state as ``Generator.set_state`` needs it: a contiguous CPU uint8 tensor.

    accelerate moves the whole optimizer state to the device, so the state may come back as a
    CUDA tensor (or strided, or a copy): the bytes are what matter.
    """
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        got = f"a tensor of {value.dtype}" if isinstance(value, torch.Tensor) else repr(value)
        raise TypeError(f"{where}: expected a torch.Generator state (a uint8 tensor), got {got}")
    return value.detach().to("cpu").contiguous()


class Seeded:
    """Mixin: ``self.generator`` seeded by ``seed`` (None: a random seed), ``reset`` back to it,
    and the generator in ``state_dict``; subclasses add their own keys via ``_extra_keys``."""

    _extra_keys: tuple[str, ...] = ()

    def _seed(self, seed: int | None) -> None:
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._initial = self.generator.get_state()

    def reset(self) -> None:
        self.generator.set_state(self._initial)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = {"generator", *self._extra_keys}
        if not isinstance(state, Mapping) or set(state) != keys:
            name = type(self).__name__
            want = "the key" if len(keys) == 1 else "the keys"
            raise ValueError(f"{name}: state: expected {want} {sorted(keys)}, got {state!r}")
        self.generator.set_state(host_generator(state["generator"],
                                                f"{type(self).__name__}: state['generator']"))
