"""Validation of :func:`mtlkit.info_nce`'s arguments, and the diagnosis of a non-finite loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mtlkit._distributed import get_world_size, is_distributed


def check_options(temperature: object, hard_negative_weight: object) -> None:
    options = (("temperature", temperature), ("hard_negative_weight", hard_negative_weight))
    for name, value in options:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
    if not temperature > 0:  # type: ignore[operator]
        raise ValueError(f"temperature: expected a number > 0, got {temperature}")


def check_embeddings(name: str, z: object, like: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (batch, dim) tensor, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {z.dtype}")
    if like is not None and z.shape != like.shape:
        raise ValueError(
            f"{name}: expected the shape of z1 {tuple(like.shape)}, got {tuple(z.shape)}"
        )
    return z


def check_ids(ids: object, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        tensor = ids
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        try:
            tensor = torch.as_tensor(list(ids))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"ids: expected integers, got {ids!r:.80}") from err
    else:
        raise TypeError(
            f"ids: expected a tensor or a sequence of ints, got {type(ids).__name__} {ids!r:.80}"
        )
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"ids: expected integer values, got dtype {tensor.dtype}")
    if tensor.shape != (batch,):
        raise ValueError(f"ids: expected shape ({batch},), one per row, got {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.long)


def check_call(
    z1: object, z2: object, z3: object, ids: object, temperature: object,
    hard_negative_weight: object, gather_across_ranks: bool,
) -> int:
    """Validates :func:`info_nce`'s arguments; returns the number of ranks to gather from."""
    check_options(temperature, hard_negative_weight)
    z1 = check_embeddings("z1", z1, None)
    check_embeddings("z2", z2, z1)
    if z3 is not None:
        check_embeddings("z3", z3, z1)
    elif hard_negative_weight != 0.0:
        raise ValueError(
            f"z3: expected hard negatives since hard_negative_weight={hard_negative_weight}, "
            "got None"
        )
    if z1.shape[0] == 0:
        raise ValueError(f"z1: expected a non-empty batch, got shape {tuple(z1.shape)}")
    world = get_world_size() if gather_across_ranks and is_distributed() else 1
    if world * z1.shape[0] * (1 if z3 is None else 2) < 2:
        raise ValueError(
            "z1: expected a batch of 2 or more rows without hard negatives (a batch of 1 has "
            "nothing to contrast against), got 1 row: pass z3, a larger batch, or "
            "gather_across_ranks under torch.distributed"
        )
    return world


def raise_non_finite(
    z1: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor | None, temperature: float
) -> None:
    """Names the input that made the loss NaN or infinite."""
    for name, z in (("z1", z1), ("z2", z2), ("z3", z3)):
        if z is None:
            continue
        bad = ~torch.isfinite(z.detach()).all(dim=-1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"{name}: expected finite embeddings, got NaN or infinite values in "
                f"{len(rows)} rows (first: {rows[:5]})"
            )
    raise ValueError(
        "z1: expected a finite loss, got a non-finite one although z1, z2 and z3 on this rank "
        "are finite: a candidate gathered from another rank is NaN or infinite, or the "
        f"logits overflowed (temperature={temperature})"
    )
