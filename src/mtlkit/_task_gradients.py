"""Per-task gradients of a set of parameters, stored as the rows of one flat T x P buffer.

The trick that makes gradient surgery cheap: before task ``i``'s backward, every managed
parameter's ``.grad`` is set to a view into row ``i`` of the buffer, so autograd accumulates the
task's gradient straight into place (no copy, no per-parameter concatenation). The combined
gradient is then written into a second flat buffer whose views become the final ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def wide_gramian(block: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """``block @ block.T`` for a short, very wide T x n block, computed as a batch of chunks.

    BLAS handles a 3 x 11M by 11M x 3 product poorly (one thread, one long accumulation); a
    batched product over ``chunks`` column slices runs about twice as fast on two threads and
    sums shorter partial products, which is also more accurate.

    Example:
        >>> import torch
        >>> j = torch.randn(3, 1000)
        >>> torch.allclose(wide_gramian(j), j @ j.T, rtol=1e-4, atol=1e-3)
        True
    """
    width = block.shape[1]
    size = width // chunks
    if size < 1024:
        return block @ block.T
    head = block[:, : size * chunks].view(block.shape[0], chunks, size).transpose(0, 1)
    out = torch.bmm(head, head.transpose(1, 2)).sum(0)
    tail = block[:, size * chunks :]
    return out.addmm_(tail, tail.T)


class TaskGradientBuffer:
    """A T x P gradient matrix ``J`` over ``params`` plus the flat combined gradient.

    Args:
        params: The parameters whose per-task gradients are recorded, in layout order.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        if not params:
            raise ValueError("params: need at least one parameter to record gradients for")
        first = params[0]
        for p in params:
            if p.device != first.device or p.dtype != first.dtype:
                raise ValueError(
                    "params: all shared parameters must have one device and dtype, got "
                    f"{first.dtype} on {first.device} and {p.dtype} on {p.device}"
                )
        self.params = list(params)
        self.offsets: list[tuple[int, int]] = []
        start = 0
        for p in self.params:
            self.offsets.append((start, start + p.numel()))
            start += p.numel()
        self.numel = start
        self.rows = torch.empty(0, self.numel, dtype=first.dtype, device=first.device)
        self.combined = torch.zeros(self.numel, dtype=first.dtype, device=first.device)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view_as(p) for p, (a, b) in zip(self.params, self.offsets, strict=True)]

    def ensure_rows(self, num_tasks: int) -> None:
        """Make room for ``num_tasks`` rows, keeping the rows already written."""
        if self.rows.shape[0] >= num_tasks:
            return
        grown = torch.empty(num_tasks, self.numel, dtype=self.rows.dtype, device=self.rows.device)
        grown[: self.rows.shape[0]].copy_(self.rows)
        self.rows = grown

    def stash_existing_grads(self) -> bool:
        """Move gradients already in ``.grad`` (accumulation) into ``combined``.

        Returns:
            Whether there was anything to accumulate onto.
        """
        grads = [p.grad for p in self.params]
        if all(g is None for g in grads):
            return False
        views = self._views(self.combined)
        for g, view in zip(grads, views, strict=True):
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
        return True

    def route_grads_to_row(self, row: int) -> None:
        """Zero row ``row`` and point every parameter's ``.grad`` at its slice of it."""
        flat = self.rows[row]
        flat.zero_()
        for p, view in zip(self.params, self._views(flat), strict=True):
            p.grad = view

    def publish_combined(self) -> None:
        """Point every parameter's ``.grad`` at its slice of the combined gradient."""
        for p, view in zip(self.params, self._views(self.combined), strict=True):
            p.grad = view

    def runs(self, mask: Sequence[bool]) -> list[tuple[int, int]]:
        """Contiguous ``(start, end)`` column ranges of the parameters where ``mask`` is true."""
        out: list[tuple[int, int]] = []
        for keep, (a, b) in zip(mask, self.offsets, strict=True):
            if not keep:
                continue
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out
