"""One backward for all tasks whose batches pass through a module stacked along dim 0.

Inside :class:`StackedRows`, every layer of the module that owns managed parameters runs with
those parameters cut off from autograd (``requires_grad`` is false for the call only), so the
one backward of the summed loss computes no summed weight gradient; a hook on the layer's
output gets the gradient reaching it and adds each task's share, from the task's rows, into
the task's row of the gradient buffer (:mod:`mtlkit.surgery._row_grads`). A layer whose input
needs no gradient (the embeddings) gets a zero scalar added to its output, so that gradients
flow down to it; a layer that sees one row broadcast over the batch (BERT's position
embeddings) has its input and output expanded to the batch, so that its gradient keeps the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mtlkit.surgery._inputs import per_task
from mtlkit.surgery._row_grads import Bounds, RowGrads, Views, rule_for


class UnsplittableModel(ValueError):
    """:meth:`MultiTaskOptimizer.stacked <mtlkit.MultiTaskOptimizer.stacked>` cannot split this
    model's gradients by rows: a layer of another type owns a shared parameter, a shared layer
    sees another number of rows than the stacked batch's, or a shared weight is used outside its
    own layer's forward. A caller can fall back to a backward per task.

    Example:
        >>> import torch
        >>> from mtlkit import MultiTaskOptimizer
        >>> from mtlkit import UnsplittableModel
        >>> conv = torch.nn.Conv1d(2, 2, 1)
        >>> opt = MultiTaskOptimizer(torch.optim.SGD(conv.parameters(), lr=0.1), "upgrad")
        >>> try:
        ...     with opt.stacked(conv, [1, 1]):
        ...         pass
        ... except UnsplittableModel as exc:
        ...     print(str(exc)[:45])
        module: expected shared parameters only in Li
    """


def parse_rows(rows: object) -> tuple[list[str], list[int]]:
    """Task names and row counts from ``{task: rows}`` or a sequence of counts (names "0"...)."""
    names, counts = per_task(rows, "rows", "a mapping {task: number of rows} or a sequence of "
                             "row counts")
    if not counts:
        raise ValueError("rows: expected at least one task, got none")
    for name, n in zip(names, counts, strict=True):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"rows[{name!r}]: expected a row count >= 0, got {n!r}")
    return names, counts


@dataclass
class _Layer:
    name: str
    module: nn.Module
    rule: RowGrads
    params: list[torch.Tensor]
    """The layer's own managed parameters (cut off from autograd during its calls)."""
    cut: list[torch.Tensor] = field(default_factory=list)
    """Those cut off by the call running now (the ones that needed a gradient)."""


def split_layers(module: nn.Module, managed: Sequence[torch.Tensor]) -> list[_Layer]:
    """The layers of ``module`` owning managed parameters; every managed one must be covered.

    Raises:
        ValueError: A managed parameter belongs to a layer whose rows cannot be split, or is
            not a parameter of ``module`` at all.
    """
    wanted = {id(p) for p in managed}
    layers, covered = [], set()
    for name, sub in module.named_modules():
        own = [p for p in sub.parameters(recurse=False) if id(p) in wanted]
        if not own:
            continue
        rule = rule_for(sub)
        if rule is None:
            raise UnsplittableModel(
                f"module: expected shared parameters only in Linear, Embedding, LayerNorm or "
                f"transformers' Conv1D layers (whose gradients split by rows), got "
                f"{name or 'the module'!r} of type "
                f"{type(sub).__name__}; use backward() outside stacked() for this model"
            )
        layers.append(_Layer(name, sub, rule, own))
        covered.update(id(p) for p in own)
    missing = [p for p in managed if id(p) not in covered]
    if missing:
        raise ValueError(
            f"module: expected every shared parameter inside it, got {len(missing)} outside "
            f"(the first of shape {tuple(missing[0].shape)})"
        )
    return layers


class StackedRows:
    """The hooks of one ``stacked()`` block and the step's targets while it backpropagates.

    Args:
        names: The tasks in the order of their rows.
        counts: Each task's number of rows along dim 0.
        layers: The layers to split (from :func:`split_layers`).
    """

    def __init__(self, names: list[str], counts: list[int], layers: list[_Layer]) -> None:
        self.names = names
        self.total = sum(counts)
        starts = [sum(counts[:i]) for i in range(len(counts))]
        self.bounds: Bounds = [(s, s + n) for s, n in zip(starts, counts, strict=True)]
        self.layers = layers
        self.params = [p for layer in layers for p in layer.params]
        self._targets: list[Views] | None = None
        self.reached: set[int] = set()
        self._anchors: dict[torch.device, torch.Tensor] = {}
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ forward
    @contextmanager
    def hooked(self):
        """Install the layers' hooks for the block (removed on exit, even on an error)."""
        try:
            for layer in self.layers:
                self._handles.append(layer.module.register_forward_pre_hook(
                    lambda mod, args, layer=layer: self._before(layer)))
                self._handles.append(layer.module.register_forward_hook(
                    lambda mod, args, kwargs, out, layer=layer: self._after(layer, args,
                                                                           kwargs, out),
                    with_kwargs=True, always_call=True))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for layer in self.layers:
                self._restore(layer)

    def _before(self, layer: _Layer) -> None:
        if torch.is_grad_enabled():
            layer.cut = [p for p in layer.params if p.requires_grad]  # a frozen one stays so
            for p in layer.cut:
                p.requires_grad_(False)

    @staticmethod
    def _restore(layer: _Layer) -> None:
        for p in layer.cut:
            p.requires_grad_(True)
        layer.cut = []

    def _after(self, layer: _Layer, args: tuple, kwargs: dict, out: Any) -> Any:
        wanted = {id(p) for p in layer.cut}
        self._restore(layer)
        if not wanted or not isinstance(out, torch.Tensor):
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        if x.shape[0] == 1 and out.shape[0] == 1 and self.total > 1:
            # one row broadcast over the batch (BERT's position embeddings): expand it, so
            # that the gradient reaching it still has every task's rows
            x = x.expand(self.total, *x.shape[1:])
            out = out.expand(self.total, *out.shape[1:])
        if x.shape[0] != self.total:
            raise UnsplittableModel(
                f"rows: expected the stacked batch of {self.total} rows along dim 0 at every "
                f"layer, got {x.shape[0]} at {layer.name!r} (input shape {tuple(x.shape)})"
            )
        if not out.requires_grad:  # an entry layer: give gradients a path down to it
            out = out + self._anchor(out.device)
        saved = [x.detach()]

        def split(g: torch.Tensor) -> None:
            if self._targets is None:
                raise RuntimeError(
                    "stacked(): backpropagate the losses with the optimizer's backward(losses) "
                    "inside the block, not loss.backward()"
                )
            if not saved:
                raise RuntimeError(
                    "stacked(): expected one backward per forward inside the block, got a "
                    "second backward through the same graph"
                )
            layer.rule(layer.module, saved[0], g, self.bounds, self._targets, wanted)
            saved.clear()  # the input is needed by this layer only: free it now
            self.reached.update(wanted)

        out.register_hook(split)
        return out

    def _anchor(self, device: torch.device) -> torch.Tensor:
        if device not in self._anchors:
            self._anchors[device] = torch.zeros((), device=device, requires_grad=True)
        return self._anchors[device]

    # ------------------------------------------------------------------ backward
    @contextmanager
    def writing(self, targets: list[Views]):
        """Route each task's share into ``targets[i]`` (task ``self.names[i]``) in the block."""
        self._targets, self.reached = targets, set()
        try:
            yield self.reached
        finally:
            self._targets = None
            for anchor in self._anchors.values():
                anchor.grad = None
