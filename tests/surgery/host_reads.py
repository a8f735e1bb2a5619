"""Counting host synchronisations on a CPU-only machine.

On a GPU, a step stalls the stream whenever device data reaches Python: ``.item()``,
``bool(tensor)``, ``.tolist()``, ``.numpy()``, ``.cpu()``. On the CPU nothing stalls, so
:class:`HostReads` simulates the distinction: tensors marked as living "on the device" (the
model's parameters and inputs), and every tensor an operator computes from one of them (found
by a ``TorchDispatchMode``, which sees the autograd engine's kernels too), are device tensors.
A read of a device tensor into Python counts as one synchronisation; ``.cpu()`` of one counts
once and returns a host copy, whose later reads are free (as on a GPU). Device-to-device moves
(``.to(device)``) are not reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class HostReads(TorchDispatchMode):
    """Taint tracking from marked tensors; :attr:`reads` lists each synchronisation."""

    def __init__(self) -> None:
        super().__init__()
        self.device: set[int] = set()
        self.keep: list[torch.Tensor] = []  # storages stay alive: no address is reused
        self.reads: list[str] = []

    def mark(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self._taint(t)

    def _taint(self, t: torch.Tensor) -> None:
        self.device.add(_key(t))
        self.keep.append(t)

    def on_device(self, t: torch.Tensor) -> bool:
        return _key(t) in self.device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is _LOCAL_SCALAR and self.on_device(inputs[0]):
            self.reads.append(f"item/bool of shape {tuple(inputs[0].shape)}")
        out = func(*args, **kwargs)
        if any(self.on_device(t) for t in inputs):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._taint(t)
        return out


@contextmanager
def counting(*device_tensors: torch.Tensor) -> Iterator[HostReads]:
    """Count the host reads inside the block, with ``device_tensors`` on the device."""
    mode = HostReads()
    mode.mark(*device_tensors)
    patched = {}

    def reader(name: str):
        original = getattr(torch.Tensor, name)
        patched[name] = original

        def read(self, *args, **kwargs):
            if mode.on_device(self):
                mode.reads.append(f"{name} of shape {tuple(self.shape)}")
                if name == "cpu":  # a host copy (on the CPU, cpu() would return self)
                    copy = self.detach().clone()
                    mode.device.discard(_key(copy))
                    return copy
            return original(self, *args, **kwargs)

        return read

    for name in ("cpu", "tolist", "numpy"):
        setattr(torch.Tensor, name, reader(name))
    try:
        with mode:
            yield mode
    finally:
        for name, original in patched.items():
            setattr(torch.Tensor, name, original)
