"""An exponential moving average of the trained weights (``--ema DECAY``).

Fine-tuning a small model on small datasets with AdamW makes the weights at the end of an
epoch a noisy sample around a good region; their running average is usually a better model
than the last sample (Polyak averaging) and costs one ``lerp`` per parameter per step. With
``--ema`` the pipeline evaluates, selects and saves the averaged weights; the raw weights'
dev scores are kept beside them in the history for comparison.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEMA:
    """Shadow copies of ``model``'s trainable parameters, averaged after every step.

    ``update()`` moves each shadow tensor towards the live parameter:
    ``shadow += (1 - d) * (param - shadow)`` with ``d = min(decay, (1 + t) / (10 + t))`` at
    update ``t``, so the first updates are not dominated by the pretrained starting point.
    The shadows are float32 whatever the parameters' dtype.

    Args:
        model: the model being trained; only parameters with ``requires_grad`` are averaged
            (frozen ones and buffers are the same in both).
        decay: the averaging factor in [0, 1); 0.999 averages roughly the last 1000 steps.

    >>> lin = nn.Linear(1, 1, bias=False)
    >>> ema = WeightEMA(lin, decay=0.5)
    >>> with torch.no_grad():
    ...     _ = lin.weight.fill_(0.0)
    ...     _ = ema.shadow["weight"].fill_(1.0)
    >>> ema.update(); ema.updates  # t = 0: d = min(0.5, 1/10) = 0.1
    1
    >>> round(ema.shadow["weight"].item(), 4)
    0.1
    >>> with ema.applied(lin):
    ...     round(lin.weight.item(), 4)
    0.1
    >>> lin.weight.item()  # the live weights come back
    0.0
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters to average")
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (call after ``optimizer.step()``)."""
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[n] for n in names],
                             [self.params[n].detach().float() for n in names], 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (the live ones come back)."""
        live = {n: p.detach().clone() for n, p in self.params.items()}
        own = dict(model.named_parameters())
        if set(live) - set(own):
            raise ValueError("applied() got a model other than the one being averaged")
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.shadow[n])
            yield model
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    def state_dict(self) -> dict[str, object]:
        """The shadows and the update count (for the last checkpoint)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s output; the parameter names must match."""
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        if set(shadow) != set(self.shadow):
            raise ValueError("the checkpoint's EMA weights do not match the model's "
                             f"trainable parameters ({len(shadow)} vs {len(self.shadow)})")
        for n, t in shadow.items():
            self.shadow[n].copy_(t)
        self.updates = int(state["updates"])  # type: ignore[call-overload]
