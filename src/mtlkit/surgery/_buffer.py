"""Per-task gradients of a set of parameters, stored as the rows of flat T x P buffers.

The trick that makes gradient surgery cheap: before task ``i``'s backward, every managed
parameter's ``.grad`` is set to a view into row ``i`` of a buffer, so autograd accumulates the
task's gradient straight into place (no copy, no per-parameter concatenation). The combined
gradient is then written into a second flat buffer whose views become the final ``.grad``.

One buffer holds parameters of one dtype and device (:class:`GradientBuffer`);
:class:`TaskGradients` keeps one per group (a bf16 encoder beside float32 heads), sums their
Gramians in float64 and writes each group's share of the combination.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlkit.surgery._gramian import exact_gramian, working_gramian

Runs = list[tuple[int, int]]


class GradientBuffer:
    """A T x P gradient matrix ``J`` over ``params`` (one dtype and device) and its combination.

    Args:
        params: The parameters whose per-task gradients are recorded, in layout order.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        first = params[0]
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
        for g, view in zip(grads, self._views(self.combined), strict=True):
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
        return True

    def route_grads_to_row(self, row: int, zero: bool = True) -> None:
        """Point every parameter's ``.grad`` at its slice of row ``row`` (zeroed first, unless
        the row already holds a gradient to add to)."""
        flat = self.rows[row]
        if zero:
            flat.zero_()
        for p, view in zip(self.params, self._views(flat), strict=True):
            p.grad = view

    def publish_combined(self) -> None:
        """Point every parameter's ``.grad`` at its slice of the combined gradient."""
        for p, view in zip(self.params, self._views(self.combined), strict=True):
            p.grad = view

    def row_views(self, row: int) -> dict[int, torch.Tensor]:
        """Each parameter's slice of row ``row``, by parameter id."""
        return {id(p): v for p, v in zip(self.params, self._views(self.rows[row]), strict=True)}

    def zeroed_row_views(self, row: int) -> dict[int, torch.Tensor]:
        """Zero row ``row``; each parameter's slice of it, by parameter id."""
        self.rows[row].zero_()
        return self.row_views(row)

    def runs(self, mask: Sequence[bool]) -> Runs:
        """Contiguous ``(start, end)`` column ranges of the parameters where ``mask`` is true."""
        out: Runs = []
        for keep, (a, b) in zip(mask, self.offsets, strict=True):
            if not keep:
                continue
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out

    def write(self, runs: Runs, weights: torch.Tensor | None, num_tasks: int,
              accumulate: bool) -> None:
        """``combined[run] (+)= weights @ rows[run]``, or the plain row sum for ``None``."""
        rows = self.rows[:num_tasks]
        for a, b in runs:
            out = self.combined[a:b]
            if weights is None:
                if accumulate:
                    out += rows[:, a:b].sum(0)
                else:
                    torch.sum(rows[:, a:b], 0, out=out)
            elif accumulate:
                out.addmv_(rows[:, a:b].T, weights)
            else:
                torch.mv(rows[:, a:b].T, weights, out=out)


class TaskGradients:
    """The per-task gradients of ``params``: one :class:`GradientBuffer` per dtype and device.

    Masks (which parameter is shared) are over :attr:`params`, the parameters in buffer order.

    Args:
        params: The managed parameters (at least one).
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.dtype, p.device), []).append(p)
        self.key = [id(p) for p in params]
        """The ids of ``params`` in the order given (the layout's identity)."""
        self.buffers = [GradientBuffer(group) for group in groups.values()]
        self.params = [p for b in self.buffers for p in b.params]
        self.numel = sum(b.numel for b in self.buffers)
        self.device = max(self.buffers, key=lambda b: b.numel).rows.device
        """Where the Gramian and the weights live: the device of the largest group."""

    def ensure_rows(self, num_tasks: int) -> None:
        for b in self.buffers:
            b.ensure_rows(num_tasks)

    def stash_existing_grads(self) -> bool:
        stashed = [b.stash_existing_grads() for b in self.buffers]
        return any(stashed)

    def route_grads_to_row(self, row: int, zero: bool = True) -> None:
        for b in self.buffers:
            b.route_grads_to_row(row, zero)

    def publish_combined(self) -> None:
        for b in self.buffers:
            b.publish_combined()

    def row_views(self, row: int) -> dict[int, torch.Tensor]:
        """Row ``row`` of every buffer: each parameter's slice of it, by parameter id."""
        return {k: v for b in self.buffers for k, v in b.row_views(row).items()}

    def zeroed_row_views(self, row: int) -> dict[int, torch.Tensor]:
        """Zero row ``row`` of every buffer; each parameter's slice of it, by parameter id."""
        return {k: v for b in self.buffers for k, v in b.zeroed_row_views(row).items()}

    def rows(self, num_tasks: int) -> list[torch.Tensor]:
        """Each buffer's first ``num_tasks`` rows (contiguous)."""
        return [b.rows[:num_tasks] for b in self.buffers]

    def combined(self) -> list[torch.Tensor]:
        return [b.combined for b in self.buffers]

    def _split(self, mask: Sequence[bool]) -> list[Sequence[bool]]:
        out, start = [], 0
        for b in self.buffers:
            out.append(mask[start : start + len(b.params)])
            start += len(b.params)
        return out

    def gramian(self, shared: Sequence[bool], num_tasks: int, exact: bool = False):
        """The float64 Gramian of the shared columns, on :attr:`device`."""
        total = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=self.device)
        for b, mask in zip(self.buffers, self._split(shared), strict=True):
            rows = b.rows[:num_tasks]
            for a, e in b.runs(mask):
                block = rows[:, a:e]
                part = exact_gramian(block) if exact else working_gramian(block)
                total += part.to(self.device)
        return total

    def rows_finite(self, shared: Sequence[bool], num_tasks: int) -> torch.Tensor:
        """Per task, whether its shared gradient is finite (a bool vector on :attr:`device`)."""
        ok = torch.ones(num_tasks, dtype=torch.bool, device=self.device)
        for b, mask in zip(self.buffers, self._split(shared), strict=True):
            rows = b.rows[:num_tasks]
            for a, e in b.runs(mask):
                ok &= torch.isfinite(rows[:, a:e]).all(dim=1).to(self.device)
        return ok

    def write(self, weights: torch.Tensor | None, shared: Sequence[bool], num_tasks: int,
              accumulate: bool) -> None:
        """Shared columns get ``weights @ J`` (the plain sum for ``None``), the others the sum."""
        for b, mask in zip(self.buffers, self._split(shared), strict=True):
            w = None if weights is None else weights.to(b.rows.device, b.rows.dtype)
            b.write(b.runs(mask), w, num_tasks, accumulate)
            b.write(b.runs([not s for s in mask]), None, num_tasks, accumulate)

    def poison(self) -> None:
        """Fill every combined gradient with NaN (a ``GradScaler`` then skips the step)."""
        for b in self.buffers:
            b.combined.fill_(float("nan"))
