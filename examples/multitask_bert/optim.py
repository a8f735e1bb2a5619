"""The pipeline's optimizer: AdamW with the paper's betas, fused where PyTorch has a fused kernel.

On two CPU cores the for-loop AdamW that PyTorch picks by default for CPU tensors, with the
gradient clipping and the weight average around it, takes about 95 ms of a 220 ms MiniLM
training step (22.6M parameters; a full mixture steps three such models). The fused kernel
makes the same update in one pass over the parameters: 37 ms, a step 0.73 times as long
(``benchmarks/bench_train_step.py``). It is used whenever every parameter is a floating-point
tensor on the CPU or a CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")


def _tensors(params: Iterable[Any]) -> list[torch.Tensor]:
    """The tensors of a parameter list or of a list of parameter groups."""
    out: list[torch.Tensor] = []
    for p in params:
        out.extend(p["params"] if isinstance(p, dict) else [p])
    return out


def can_fuse(params: Iterable[Any]) -> bool:
    """Whether PyTorch's fused AdamW kernel takes all of ``params`` (tensors or groups).

    >>> can_fuse([torch.nn.Parameter(torch.zeros(2))])
    True
    >>> can_fuse([{"params": [torch.nn.Parameter(torch.zeros(1))]}])  # parameter groups
    True
    >>> can_fuse([])
    False
    """
    tensors = _tensors(params)
    return bool(tensors) and all(t.device.type in FUSED_DEVICES and t.is_floating_point()
                                 for t in tensors)


def adamw(params: Iterable[Any], lr: float) -> torch.optim.AdamW:
    """AdamW with betas (0.9, 0.99) and no weight decay (the paper's), fused when it can be.

    Args:
        params: parameters, or parameter groups (dicts with ``"params"``).
        lr: the learning rate.

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = adamw([w], lr=0.1)
    >>> w.sum().backward(); opt.step()
    >>> w.detach()
    tensor([0.9000, 0.9000, 0.9000])
    >>> opt.defaults["fused"]
    True
    """
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0,
                             fused=can_fuse(params) or None)
