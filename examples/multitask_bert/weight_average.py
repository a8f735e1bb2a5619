"""An exponential moving average of the trained weights (``--ema DECAY``).

Fine-tuning a small model on small datasets with AdamW makes the weights at the end of an
epoch a noisy sample around a good region; their running average is usually a better model
than the last sample (Polyak averaging) and costs one ``lerp`` per parameter per step. With
``--ema`` the pipeline evaluates, selects and saves the averaged weights; the raw weights' dev
scores are kept beside them in the history for comparison.

The average is PyTorch's :class:`torch.optim.swa_utils.AveragedModel` (a copy of the model,
its update count, its ``state_dict``) with one change to its EMA rule
(``get_ema_multi_avg_fn``): the decay warms up, ``d = min(decay, (1 + t) / (10 + t))`` at
update ``t``. With the fixed 0.999 of ``get_ema_multi_avg_fn`` the first weights of a
2-epoch run (1,768 steps) would still hold 17% of the final average (``0.999 ** 1768``) and
41% after one epoch; with the warm-up they fade within a few dozen steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor],
                                          None]:
    """A ``multi_avg_fn`` for :class:`AveragedModel`: EMA whose decay warms up to ``decay``.

    ``AveragedModel`` copies the weights at its first update and calls this for the later
    ones with the number of updates so far, ``t``: ``avg += (1 - d) * (param - avg)`` with
    ``d = min(decay, (1 + t) / (10 + t))``.

    >>> avg, new = [torch.zeros(1)], [torch.ones(1)]
    >>> warmup_ema(0.999)(avg, new, torch.tensor(1))  # d = 2 / 11
    >>> round(avg[0].item(), 4)
    0.8182

    Raises:
        ValueError: ``decay`` outside [0, 1).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"--ema: expected a decay in [0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
        t = int(num_averaged)
        d = min(decay, (1.0 + t) / (10.0 + t))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """``AveragedModel(model)`` with the warm-up EMA of :func:`warmup_ema`.

    Call ``update_parameters(model)`` after every optimizer step; ``.module`` is the averaged
    model (evaluate it, save its ``state_dict``).

    >>> lin = nn.Linear(1, 1, bias=False)
    >>> avg = weight_average(lin, decay=0.5)
    >>> for value in (1.0, 3.0):
    ...     _ = lin.weight.data.fill_(value)
    ...     avg.update_parameters(lin)
    >>> avg.module.weight.item(), int(avg.n_averaged)  # copy of 1, then d = 2/11: 1 + 9/11 * 2
    (2.6363635063171387, 2)
    """
    return AveragedModel(model, multi_avg_fn=warmup_ema(decay), use_buffers=False)
