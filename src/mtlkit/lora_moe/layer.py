"""The routing layer of :class:`mtlkit.LoRAMoE` (peft's ``layer`` role): experts per sample.

peft stores the experts (one LoRA adapter per task) and merges them; the routing lives here. Each
peft LoRA layer runs with its adapters disabled (so it returns the frozen base layer's output) and a
forward hook adds the routed expert's low-rank update, ``B_t A_t x * alpha / r`` (paper Eq. 6), to
each sample's rows. Because the update is an ordinary out-of-place autograd op, per-sample routing
works in training, which peft's own ``adapter_names`` argument refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Route:
    """How one forward pass sends samples to experts.

    Attributes:
        batch_size: number of samples the hooked layers must see (dim 0 of their input).
        groups: ``(task, indices)`` pairs; ``indices`` is ``None`` when the task takes the whole
            batch.
    """

    batch_size: int | None
    groups: tuple[tuple[str, torch.Tensor | None], ...]


def build_route(
    task: str | Sequence[str] | torch.Tensor,
    tasks: Sequence[str],
    batch_size: int | None,
    device: torch.device,
) -> Route:
    """Validates ``task`` and groups the batch by expert.

    Args:
        task: one task name (the whole batch), a sequence of task names (one per sample) or an
            integer tensor of task indices into ``tasks`` (one per sample).
        tasks: the experts' names, in order.
        batch_size: the batch size read from the inputs, or ``None`` when it cannot be read.
        device: where index tensors go.

    Raises:
        ValueError: an unknown task name or index, or a routing whose length is not the batch size.
        TypeError: ``task`` of another type.
    """
    if isinstance(task, str):
        if task not in tasks:
            raise ValueError(f"task: expected one of {list(tasks)}, got unknown task {task!r}")
        return Route(None, ((task, None),))
    if isinstance(task, torch.Tensor):
        if task.dim() != 1 or task.dtype in (torch.bool,) or task.is_floating_point():
            raise TypeError(
                "task: expected a 1-D integer tensor of task indices, got dtype "
                f"{task.dtype} and shape {tuple(task.shape)}"
            )
        bad = (task < 0) | (task >= len(tasks))
        if bool(bad.any()):
            raise ValueError(
                f"task: expected task indices in [0, {len(tasks)}), got {task.tolist()}"
            )
        names = [tasks[i] for i in task.tolist()]
    elif isinstance(task, Sequence):
        names = list(task)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"task: expected a sequence of task names (str), got {name!r}")
            if name not in tasks:
                raise ValueError(f"task: expected one of {list(tasks)}, got unknown task {name!r}")
    else:
        raise TypeError(
            f"task: expected a task name, a sequence of task names or an index tensor, "
            f"got {type(task).__name__}"
        )
    if not names:
        raise ValueError("task: expected one task name per sample, got an empty sequence")
    if batch_size is not None and len(names) != batch_size:
        raise ValueError(
            f"task: expected one entry per sample ({batch_size}), got {len(names)} entries"
        )
    if len(set(names)) == 1:
        # One expert for every sample: the cheap whole-batch path, same numbers.
        return Route(len(names), ((names[0], None),))
    groups = []
    for name in tasks:
        rows = [i for i, n in enumerate(names) if n == name]
        if rows:
            groups.append((name, torch.tensor(rows, dtype=torch.long, device=device)))
    return Route(len(names), tuple(groups))


def expert_delta(layer: nn.Module, task: str, x: torch.Tensor) -> torch.Tensor:
    """The low-rank update ``scaling * B(A(dropout(x)))`` of ``task``'s expert in a peft layer."""
    lora_a = layer.lora_A[task]
    x = x.to(lora_a.weight.dtype)
    return layer.lora_B[task](lora_a(layer.lora_dropout[task](x))) * layer.scaling[task]


def routed_output(layer: nn.Module, route: Route, x: torch.Tensor, out: torch.Tensor):
    """Adds each group's expert update to its rows of ``out`` (out of place, so autograd-safe)."""
    if route.batch_size is not None and x.shape[0] != route.batch_size:
        raise ValueError(
            f"task: expected {route.batch_size} samples on dim 0 of every adapted layer (one "
            f"routing entry each), got a LoRA layer input of batch {x.shape[0]}"
        )
    for task, rows in route.groups:
        if rows is None:
            out = out + expert_delta(layer, task, x).to(out.dtype)
        else:
            delta = expert_delta(layer, task, x.index_select(0, rows)).to(out.dtype)
            out = out.index_add(0, rows, delta)
    return out


class RoutingState:
    """The route of the current forward pass, shared by the hooks of one mixture.

    Kept in a plain object (not a closure) so that ``copy.deepcopy`` of a mixture gives the copy's
    hooks the copy's state.
    """

    def __init__(self) -> None:
        self.route: Route | None = None


class RoutingHook:
    """Forward hook of one peft LoRA layer: adds the routed experts' updates to its output."""

    def __init__(self, state: RoutingState) -> None:
        self.state = state

    def __call__(self, layer: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        route = self.state.route
        if route is None:  # called outside LoRAMoE.forward: the bare base layer
            return None
        return routed_output(layer, route, args[0], out)


def checkpointing(model: nn.Module) -> bool:
    """Whether Hugging Face activation checkpointing is on."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


def batch_info(args: tuple[Any, ...], inputs: dict[str, Any]) -> tuple[int | None, torch.device]:
    """Batch size and device of the first tensor input (``input_ids``/``inputs_embeds`` first)."""
    ordered = [inputs.get("input_ids"), inputs.get("inputs_embeds"), *args, *inputs.values()]
    for value in ordered:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0], value.device
    return None, torch.device("cpu")
