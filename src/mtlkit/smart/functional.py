"""SMART as functions: the divergence, the adversarial regularizer and the Bregman penalty.

The modules :class:`mtlkit.SmartLoss` and :class:`mtlkit.BregmanProximal` keep options and state
(the EMA teacher) and call these functions, as ``torch.optim`` optimizers call their functional
cores. Call them directly when you hold the options yourself.

The divergence :math:`\\ell_s` of SMART (Jiang et al., 2020) depends on what the output is:

* ``kind="classification"``: the output is ``(..., classes)`` logits, ``classes >= 2``, compared
  as softmax laws with the symmetric KL
  :math:`\\sum_c (p_c - q_c)(\\log p_c - \\log q_c)`, summed over classes;
* ``kind="binary"``: every element is the logit of one binary decision (for example a ``(B,)``
  paraphrase logit), compared as Bernoulli laws:
  :math:`(\\sigma(a) - \\sigma(b))(a - b)`;
* ``kind="regression"``: the mean squared error over all elements.

**One convention for a single logit:** use ``kind="binary"``. A ``"classification"`` output whose
last dimension is 1 (or that has no class dimension at all) raises ``ValueError``: a softmax over
one class is constant, and a softmax over a batch of logits mixes examples, so neither is silently
reinterpreted. (Two-class logits ``[0, z]`` under ``"classification"`` equal ``z`` under
``"binary"``, but ``"binary"`` is the direct form.)

Every divergence is computed in float32 and averaged over examples.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from mtlkit.smart._noise import ascent_step
from mtlkit.smart._options import KINDS, NORMS, Kind, Norm, check_attack, check_kind, check_number

__all__ = ["KINDS", "NORMS", "Kind", "Norm", "bregman_penalty", "divergence", "smart_loss"]

logger = logging.getLogger(__name__)


def _check_output(name: str, output: object, kind: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(output).__name__}")
    if not output.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {output.dtype}")
    if kind == "classification" and (output.dim() < 2 or output.shape[-1] < 2):
        raise ValueError(
            f"kind: expected 'binary' for one logit per example, got 'classification' with "
            f"{name} of shape {tuple(output.shape)} (classification needs logits shaped "
            "(..., classes) with classes >= 2)"
        )
    return output


def _divergence(kind: str, input: Tensor, target: Tensor) -> Tensor:
    """The divergence on checked arguments, in float32, averaged over examples."""
    input, target = input.float(), target.float()
    if kind == "regression":
        return torch.nn.functional.mse_loss(input, target)
    if kind == "binary":
        return ((torch.sigmoid(input) - torch.sigmoid(target)) * (input - target)).mean()
    log_p = torch.log_softmax(input, dim=-1)
    log_q = torch.log_softmax(target, dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1).mean()


def divergence(input: Tensor, target: Tensor, kind: Kind = "classification") -> Tensor:
    """SMART's :math:`\\ell_s(\\text{input}, \\text{target})` in float32, averaged over examples.

    Gradients reach both arguments. ``kind`` is described in the module docstring.

    Args:
        input: model outputs.
        target: outputs of the same shape.
        kind: ``"classification"``, ``"binary"`` or ``"regression"``.

    Raises:
        ValueError: an unknown ``kind``, shapes that differ, or a ``"classification"`` output
            without a class dimension of size >= 2 (use ``kind="binary"``).

    Example:
        >>> import torch
        >>> from mtlkit.smart import functional
        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> round(functional.divergence(a, b).item(), 4)  # 2 * tanh(1) * 2
        3.0464
        >>> z, w = torch.tensor([2.0]), torch.tensor([-2.0])  # one logit each: "binary"
        >>> round(functional.divergence(z, w, kind="binary").item(), 4)
        3.0464
        >>> functional.divergence(z[:, None], w[:, None])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: kind: expected 'binary' for one logit per example, got 'classification' ...
    """
    check_kind(kind)
    _check_output("input", input, kind)
    _check_output("target", target, kind)
    if input.shape != target.shape:
        raise ValueError(
            f"target: expected the shape of input {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    return _divergence(kind, input, target)


def bregman_penalty(
    output: Tensor, teacher_output: Tensor, *, mu: float = 1.0, kind: Kind = "classification"
) -> Tensor:
    """SMART's Bregman proximal penalty ``mu * ell_s(output, teacher_output)`` (Eq. 3).

    ``teacher_output`` is detached: gradients reach ``output`` only.

    Example:
        >>> import torch
        >>> from mtlkit.smart import functional
        >>> out, teacher = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
        >>> functional.bregman_penalty(out, teacher, mu=2.0, kind="regression").item()
        10.0
    """
    mu = check_number("mu", mu, positive=False)
    if not isinstance(teacher_output, Tensor):
        raise TypeError(
            f"teacher_output: expected a torch.Tensor, got {type(teacher_output).__name__}"
        )
    return mu * divergence(output, teacher_output.detach(), kind)


def _check_inputs(
    forward_fn: object, embeddings: object, clean_output: object, attention_mask: object,
    kind: str,
) -> Tensor | None:
    """Validates the call's tensors; returns the noise mask ``(..., tokens, 1)`` or ``None``."""
    if not callable(forward_fn):
        raise TypeError(f"forward_fn: expected a callable, got {type(forward_fn).__name__}")
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"embeddings: expected a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point() or embeddings.dim() < 2:
        raise ValueError(
            "embeddings: expected a floating tensor shaped (..., tokens, hidden), got "
            f"dtype {embeddings.dtype} and shape {tuple(embeddings.shape)}"
        )
    _check_output("clean_output", clean_output, kind)
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask: expected a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != embeddings.shape[:-1]:
        raise ValueError(
            f"attention_mask: expected shape {tuple(embeddings.shape[:-1])} (embeddings without "
            f"the hidden dimension), got {tuple(attention_mask.shape)}"
        )
    return (attention_mask != 0).unsqueeze(-1).to(embeddings.dtype)


def _perturbed(forward_fn: Callable[[Tensor], Tensor], inputs: Tensor, like: Tensor) -> Tensor:
    out = forward_fn(inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_fn: expected to return a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape:
        raise ValueError(
            f"forward_fn: expected an output of clean_output's shape {tuple(like.shape)}, got "
            f"{tuple(out.shape)}"
        )
    return out


def _attack(
    forward_fn: Callable[[Tensor], Tensor], base: Tensor, target: Tensor, noise: Tensor,
    mask: Tensor | None, kind: str, step: Callable[[Tensor, Tensor], Tensor], num_steps: int,
) -> tuple[Tensor, Tensor]:
    """``num_steps`` ascent steps on the noise only; (final noise, any non-finite gradient)."""
    bad = torch.zeros((), dtype=torch.bool, device=base.device)
    for _ in range(num_steps):
        noise = noise.detach().requires_grad_(True)
        with torch.enable_grad():
            div = _divergence(kind, _perturbed(forward_fn, base + noise, target), target)
            grad = None
            if div.requires_grad:
                (grad,) = torch.autograd.grad(div, noise, allow_unused=True)
        with torch.no_grad():
            if grad is None:  # the output does not depend on the embeddings
                grad = torch.zeros_like(noise)
            bad = bad | ~torch.isfinite(grad).all()
            noise = step(noise.detach(), torch.nan_to_num(grad, 0.0, 0.0, 0.0))
            if mask is not None:
                noise = noise * mask
    return noise.detach(), bad


def smart_loss(
    forward_fn: Callable[[Tensor], Tensor],
    embeddings: Tensor,
    clean_output: Tensor,
    attention_mask: Tensor | None = None,
    *,
    kind: Kind = "classification",
    epsilon: float = 1e-5,
    noise_std: float = 1e-5,
    step_size: float = 1e-3,
    num_steps: int = 1,
    norm: Norm = "linf",
    project: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SMART's adversarial regularizer :math:`\\mathcal{R}_s` for one batch (Eq. 4).

    The arguments and the options are those of :class:`mtlkit.SmartLoss` (its ``forward`` and its
    constructor); this is the function it calls.

    Raises:
        ValueError: bad options or shapes, or non-finite (NaN or infinite) ``embeddings``.

    Example:
        >>> import torch
        >>> from mtlkit.smart import functional
        >>> head = torch.nn.Linear(8, 1)
        >>> forward_fn = lambda emb: head(emb.mean(dim=1)).squeeze(-1)  # one logit per example
        >>> emb = torch.randn(4, 5, 8)
        >>> reg = functional.smart_loss(forward_fn, emb, forward_fn(emb), kind="binary")
        >>> bool(reg >= 0), reg.dtype
        (True, torch.float32)
    """
    check_kind(kind)
    check_attack(epsilon=epsilon, noise_std=noise_std, step_size=step_size, num_steps=num_steps,
                 norm=norm, project=project, generator=generator)
    mask = _check_inputs(forward_fn, embeddings, clean_output, attention_mask, kind)
    noise = torch.randn(embeddings.shape, generator=generator, dtype=embeddings.dtype,
                        device=embeddings.device).mul_(noise_std)
    if mask is not None:
        noise = noise * mask

    def step(n: Tensor, g: Tensor) -> Tensor:
        return ascent_step(n, g, norm=norm, epsilon=float(epsilon), step_size=float(step_size),
                           project=project)

    noise, bad = _attack(forward_fn, embeddings.detach(), clean_output.detach(), noise, mask,
                         kind, step, num_steps)
    reg = _divergence(kind, _perturbed(forward_fn, embeddings + noise, clean_output), clean_output)
    bad_embeddings = ~torch.isfinite(embeddings.detach()).all()
    flags = torch.stack([bad_embeddings, bad | ~torch.isfinite(reg)]).tolist()  # one host sync
    if flags[0]:
        count = int((~torch.isfinite(embeddings.detach())).sum())
        raise ValueError(
            f"embeddings: expected finite values, got {count} NaN or infinite entries of "
            f"{embeddings.numel()}"
        )
    if flags[1]:
        msg = "SmartLoss: non-finite gradient or divergence; returning 0 for this batch"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)
        return torch.zeros((), dtype=torch.float32, device=reg.device)
    return reg
