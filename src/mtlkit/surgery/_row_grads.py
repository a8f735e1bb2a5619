"""Each task's share of one layer's parameter gradients, from one backward over all tasks.

When the tasks' batches are stacked along dim 0 and every layer treats rows independently,
task ``t``'s gradient of a layer's parameters depends only on ``t``'s rows of the layer's input
``x`` and of the gradient ``g`` reaching its output: for a linear layer ``G_t^T X_t`` (``X_t^T
G_t`` for transformers' transposed ``Conv1D``) and the column sums of ``G_t``, for an embedding
the rows of ``G_t`` added at ``t``'s indices, for a layer norm the sums of ``G_t * x_hat_t`` and
``G_t``. Splitting the one weight-gradient product into T products over row blocks costs the
same arithmetic as the plain backward's.

Each function adds task ``t``'s gradients into ``views[t]`` (parameter id -> tensor), for the
parameters whose ids are in ``wanted`` (those that needed a gradient), and returns nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Views = dict[int, torch.Tensor]
Bounds = Sequence[tuple[int, int]]


def _add_product(view: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
    """``view += g^T x``, computed in ``g``'s precision (bf16 under autocast, as plain)."""
    if g.dtype == view.dtype and x.dtype == view.dtype:
        view.addmm_(g.T, x)
    else:
        view.add_(g.T @ x.to(g.dtype))


def _dense_grads(weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool,
                 x: torch.Tensor, g: torch.Tensor, bounds: Bounds, views: Sequence[Views],
                 wanted: set[int]) -> None:
    g2 = g.reshape(g.shape[0], -1, g.shape[-1])
    x2 = x.reshape(x.shape[0], -1, x.shape[-1])
    for (a, b), out in zip(bounds, views, strict=True):
        if a == b:
            continue
        gt, xt = g2[a:b].reshape(-1, g2.shape[-1]), x2[a:b].reshape(-1, x2.shape[-1])
        if id(weight) in wanted:
            if transposed:  # the weight is (in, out): X_t^T G_t
                _add_product(out[id(weight)], xt.to(gt.dtype), gt)
            else:
                _add_product(out[id(weight)], gt, xt)
        if bias is not None and id(bias) in wanted:
            out[id(bias)].add_(gt.sum(0, dtype=out[id(bias)].dtype))


def linear_grads(m: nn.Linear, x: torch.Tensor, g: torch.Tensor, bounds: Bounds,
                 views: Sequence[Views], wanted: set[int]) -> None:
    _dense_grads(m.weight, m.bias, False, x, g, bounds, views, wanted)


def conv1d_grads(m: nn.Module, x: torch.Tensor, g: torch.Tensor, bounds: Bounds,
                 views: Sequence[Views], wanted: set[int]) -> None:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored transposed."""
    _dense_grads(m.weight, m.bias, True, x, g, bounds, views, wanted)


def embedding_grads(m: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, bounds: Bounds,
                    views: Sequence[Views], wanted: set[int]) -> None:
    if id(m.weight) not in wanted:
        return
    for (a, b), out in zip(bounds, views, strict=True):
        idx, gt = ids[a:b].reshape(-1), g[a:b].reshape(-1, g.shape[-1])
        if m.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = idx != m.padding_idx
            idx, gt = idx[keep], gt[keep]
        view = out[id(m.weight)]
        view.index_add_(0, idx, gt.to(view.dtype))


def layer_norm_grads(m: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor, bounds: Bounds,
                     views: Sequence[Views], wanted: set[int]) -> None:
    shape = tuple(m.normalized_shape)
    for (a, b), out in zip(bounds, views, strict=True):
        if a == b:
            continue
        gt = g[a:b].reshape(-1, *shape)
        if m.weight is not None and id(m.weight) in wanted:
            view = out[id(m.weight)]
            x_hat = F.layer_norm(x[a:b].to(view.dtype), shape, None, None, m.eps)
            view.add_((gt.to(view.dtype) * x_hat.reshape(-1, *shape)).sum(0))
        if m.bias is not None and id(m.bias) in wanted:
            out[id(m.bias)].add_(gt.sum(0, dtype=out[id(m.bias)].dtype))


RowGrads = Callable[[nn.Module, torch.Tensor, torch.Tensor, Bounds, Sequence[Views], set[int]],
                    None]

SUPPORTED: tuple[tuple[type[nn.Module], RowGrads], ...] = (
    (nn.Linear, linear_grads),
    (nn.Embedding, embedding_grads),
    (nn.LayerNorm, layer_norm_grads),
)
"""The torch layer types whose parameters can be split by rows, with their gradient rule
(and transformers' ``Conv1D``, found by :func:`rule_for` when transformers is loaded)."""


def _hf_conv1d() -> type | None:
    # transformers' Conv1D, when transformers is loaded (a model using it has loaded it)
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def rule_for(module: nn.Module) -> RowGrads | None:
    """The gradient rule of ``module``'s type, or ``None`` when its rows cannot be split."""
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse
                                             or module.scale_grad_by_freq):
        return None  # renormalising or frequency-scaled embeddings are not row-separable here
    for kind, rule in SUPPORTED:
        if isinstance(module, kind):
            return rule
    conv1d = _hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return conv1d_grads
    return None
