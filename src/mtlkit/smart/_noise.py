"""The per-token norms, normalization, projection and ascent step of SMART's noise."""

from __future__ import annotations

import torch
from torch import Tensor


def token_norm(x: Tensor, norm: str) -> Tensor:
    """Per-token norm over the last dimension, kept for broadcasting."""
    if norm == "linf":
        return x.abs().amax(dim=-1, keepdim=True)
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def normalize(x: Tensor, norm: str) -> Tensor:
    """``x / ||x||`` per token; tokens whose norm is 0 stay 0 (never NaN)."""
    n = token_norm(x, norm)
    return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))


def project_onto_ball(x: Tensor, norm: str, epsilon: float) -> Tensor:
    """Euclidean projection onto the per-token ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return x.clamp(-epsilon, epsilon)
    n = token_norm(x, norm)
    return x * (epsilon / n.clamp_min(epsilon))


def ascent_step(
    noise: Tensor, grad: Tensor, *, norm: str, epsilon: float, step_size: float, project: bool
) -> Tensor:
    """One step of the inner maximization.

    ``project=True`` (the paper): ``Pi_eps(noise + eta * g / ||g||)``. ``project=False``
    (smart-pytorch, mt-dnn): ``(noise + eta * g) / ||noise + eta * g||``, never projected.
    """
    if project:
        return project_onto_ball(noise + step_size * normalize(grad, norm), norm, epsilon)
    return normalize(noise + step_size * grad, norm)
