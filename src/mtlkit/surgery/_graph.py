"""Inspecting autograd graphs: which losses share intermediate nodes."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def graphs_needing_retention(losses: Sequence[torch.Tensor]) -> list[bool]:
    """For each loss, whether its graph must be retained for the backwards of the later losses.

    Backwards run in order; loss ``i``'s graph needs ``retain_graph=True`` only if it shares a
    non-leaf node with a later loss (as when several heads read one forward pass). Losses from
    separate forward passes share only parameter leaves (``AccumulateGrad`` nodes, which hold no
    buffers), so their graphs can be freed one by one, as soon as each backward is done.

    Example:
        >>> import torch
        >>> w = torch.ones(3, requires_grad=True)
        >>> h = w * 2                                  # one forward read by two losses
        >>> graphs_needing_retention([h.sum(), (h ** 2).sum(), (w * 3).sum()])
        [True, False, False]
    """
    later: set[torch.autograd.graph.Node] = set()
    retain = [False] * len(losses)
    for i in range(len(losses) - 1, -1, -1):
        root = losses[i].grad_fn
        if root is None:
            continue
        stack = [root]
        mine: set[torch.autograd.graph.Node] = set()
        while stack:
            node = stack.pop()
            if node in mine:
                continue
            if node in later:
                if type(node).__name__ != "AccumulateGrad":
                    retain[i] = True
                continue  # everything below it is already known
            mine.add(node)
            stack.extend(child for child, _ in node.next_functions if child is not None)
        later |= mine
    return retain
