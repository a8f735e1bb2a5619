"""Which parameters a task's backward reached, recorded by post-accumulate-grad hooks.

The hooks hold only a weak reference to their recorder, and the recorder removes them when it
is closed or collected: a hundred optimizers built over one model and dropped leave no hook.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


def _record(recorder: weakref.ref, param: torch.Tensor) -> None:
    owner = recorder()
    if owner is not None and owner._now is not None:
        owner._now.add(id(param))


def _remove_all(handles: dict[int, Any]) -> None:
    for handle in handles.values():
        handle.remove()
    handles.clear()


class ReachRecorder:
    """Hooks on the watched parameters; :meth:`recording` collects the ids a backward reached.

    Example:
        >>> import torch
        >>> a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        >>> recorder = ReachRecorder()
        >>> recorder.watch([a, b])
        >>> with recorder.recording() as reached:
        ...     a.sum().backward()
        >>> reached == {id(a)}
        True
        >>> recorder.close(); len(a._post_accumulate_grad_hooks)
        0
    """

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}
        self._now: set[int] | None = None
        self._finalizer = weakref.finalize(self, _remove_all, self._handles)

    def watch(self, params: Sequence[torch.Tensor]) -> None:
        """Hook exactly ``params``: new ones get a hook, dropped ones lose theirs."""
        wanted = {id(p): p for p in params}
        for key in [k for k in self._handles if k not in wanted]:
            self._handles.pop(key).remove()
        me = weakref.ref(self)
        for key, p in wanted.items():
            if key not in self._handles:
                self._handles[key] = p.register_post_accumulate_grad_hook(
                    lambda param, me=me: _record(me, param)
                )

    @contextmanager
    def recording(self) -> Iterator[set[int]]:
        """Collect, into the yielded set, the ids of the parameters reached inside the block."""
        reached: set[int] = set()
        self._now = reached
        try:
            yield reached
        finally:
            self._now = None

    def close(self) -> None:
        """Remove every hook now."""
        self._finalizer()
