"""SMART's smoothness-inducing adversarial regularizer (Jiang et al., 2020; the paper's Eq. 4).

.. math::

    \\mathcal{R}_s(\\theta) = \\frac{1}{n} \\sum_{i=1}^n
        \\max_{\\|\\tilde x_i - x_i\\|_p \\le \\epsilon}
        \\ell_s\\big(f(\\tilde x_i; \\theta), f(x_i; \\theta)\\big)

The inner maximum is approximated by ``num_steps`` normalized ascent steps on a noise tensor
added to the *word* embeddings (SMART's Algorithm 1). Departures from the paper, all documented
in the guide (``docs/guides/smart.md``):

* norms and the projection act per token (the last dimension); for ``linf`` this is the same
  ball as the whole-sequence ball, for ``l2`` it is a product of per-token balls;
* ``project=False`` reproduces the de-facto mode of smart-pytorch and mt-dnn: the noise is
  normalized to unit norm per token and never projected, so its radius is 1, not ``epsilon``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

Kind = Literal["classification", "binary", "regression"]
Norm = Literal["linf", "l2"]
_KINDS = ("classification", "binary", "regression")
_NORMS = ("linf", "l2")


def _symmetric_kl_categorical(input: Tensor, target: Tensor) -> Tensor:
    """KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c), summed over classes."""
    log_p = torch.log_softmax(input, dim=-1)
    log_q = torch.log_softmax(target, dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def _symmetric_kl_bernoulli(input: Tensor, target: Tensor) -> Tensor:
    """Symmetric KL of two Bernoulli laws given by logits a, b: (sigmoid(a) - sigmoid(b))(a - b)."""
    return (torch.sigmoid(input) - torch.sigmoid(target)) * (input - target)


def _divergence(kind: str, input: Tensor, target: Tensor) -> Tensor:
    """SMART's ``ell_s`` in float32, averaged over examples; gradients reach both arguments.

    ``classification``: symmetric KL between softmax laws over the last dimension (a last
    dimension of size 1 is read as one binary logit); ``binary``: every element is one logit;
    ``regression``: mean squared error over all elements.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"forward_fn must return a torch.Tensor, got {type(input).__name__}")
    if input.shape != target.shape:
        raise ValueError(
            f"forward_fn output has shape {tuple(input.shape)} but clean_output has shape "
            f"{tuple(target.shape)}; they must match"
        )
    input, target = input.float(), target.float()
    if kind == "regression":
        return torch.nn.functional.mse_loss(input, target)
    if kind == "binary" or input.shape[-1] == 1:
        return _symmetric_kl_bernoulli(input, target).mean()
    return _symmetric_kl_categorical(input, target).mean()


def _token_norm(x: Tensor, norm: str) -> Tensor:
    """Per-token norm over the last dimension, kept for broadcasting."""
    if norm == "linf":
        return x.abs().amax(dim=-1, keepdim=True)
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _normalize(x: Tensor, norm: str) -> Tensor:
    """``x / ||x||`` per token; tokens whose norm is 0 stay 0 (never NaN)."""
    n = _token_norm(x, norm)
    return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))


def _project(x: Tensor, norm: str, epsilon: float) -> Tensor:
    """Euclidean projection onto the per-token ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return x.clamp(-epsilon, epsilon)
    n = _token_norm(x, norm)
    return x * (epsilon / n.clamp_min(epsilon))


class SmartLoss(nn.Module):
    """SMART's smoothness-inducing adversarial regularizer :math:`\\mathcal{R}_s` (Eq. 4).

    Noise starts as :math:`\\mathcal{N}(0, \\sigma^2)` on the word embeddings (zero at padding
    positions), takes ``num_steps`` ascent steps on the divergence between the perturbed and the
    (detached) clean output, with respect to the noise only, and the returned value is the
    divergence at the final perturbation, through which gradients reach the parameters on both
    the perturbed and the clean side. Multiply it by :math:`\\lambda_s` yourself.

    Args:
        kind: ``"classification"`` (symmetric KL of softmax laws; a last dimension of size 1 is
            one binary logit, compared as Bernoulli laws), ``"binary"`` (every element is a
            binary logit) or ``"regression"`` (mean squared error). Computed in float32.
        epsilon: radius of the per-token ball when ``project=True`` (SMART: ``1e-5``).
            Unused when ``project=False``.
        noise_std: standard deviation of the initial noise (SMART: ``1e-5``).
        step_size: ascent step size :math:`\\eta` (SMART: ``1e-3``).
        num_steps: number of ascent steps (SMART: 1). ``0`` means random-noise regularization
            (R3F-like): the initial Gaussian noise is used as is, without projection.
        norm: ``"linf"`` or ``"l2"``: the per-token norm used to normalize and project.
        project: ``True`` (the paper): the step is ``eta * g / ||g||`` and the noise is projected
            onto the ``epsilon`` ball. ``False`` (smart-pytorch, mt-dnn): the noise becomes
            ``(noise + eta * g) / ||noise + eta * g||`` with the raw gradient ``g``, never
            projected: per-token norm 1 whatever ``epsilon`` is.
        generator: optional :class:`torch.Generator` for the initial noise (on the
            embeddings' device).

    ``forward_fn`` is called ``num_steps + 1`` times per call, in the model's current mode: in
    training mode each call draws new dropout masks, and on a dropout model that difference
    dominates the divergence at the paper's radius (see the guide).

    Returns from ``forward``: a non-negative float32 scalar. If the output does not depend on
    the embeddings it is 0 (the zero gradient gives a zero step, not NaN). If the gradient or
    the result is not finite, a ``RuntimeWarning`` is issued and a detached 0 is returned, so
    no NaN reaches the model.

    Example:
        >>> import torch
        >>> from mtlkit import SmartLoss
        >>> _ = torch.manual_seed(0)
        >>> head = torch.nn.Linear(8, 3)
        >>> forward_fn = lambda emb: head(emb.mean(dim=1))   # embeddings -> logits
        >>> emb = torch.randn(4, 5, 8)                        # (batch, tokens, hidden)
        >>> mask = torch.ones(4, 5, dtype=torch.long)
        >>> logits = forward_fn(emb)
        >>> reg = SmartLoss(kind="classification")(forward_fn, emb, logits, attention_mask=mask)
        >>> bool(reg >= 0), reg.shape
        (True, torch.Size([]))
        >>> reg.backward()                                    # reaches the head's weights
        >>> head.weight.grad is not None
        True
    """

    def __init__(
        self,
        kind: Kind = "classification",
        epsilon: float = 1e-5,
        noise_std: float = 1e-5,
        step_size: float = 1e-3,
        num_steps: int = 1,
        norm: Norm = "linf",
        project: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        for name, value, strict in (
            ("epsilon", epsilon, True),
            ("noise_std", noise_std, False),
            ("step_size", step_size, True),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (value > 0 if strict else value >= 0) or value != value or value == float("inf"):
                bound = "> 0" if strict else ">= 0"
                raise ValueError(f"{name} must be finite and {bound}, got {value}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int):
            raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if not isinstance(project, bool):
            raise TypeError(f"project must be a bool, got {type(project).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.kind, self.norm, self.project = kind, norm, project
        self.epsilon, self.noise_std = float(epsilon), float(noise_std)
        self.step_size, self.num_steps = float(step_size), num_steps
        self.generator = generator

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, epsilon={self.epsilon}, noise_std={self.noise_std}, "
            f"step_size={self.step_size}, num_steps={self.num_steps}, norm={self.norm!r}, "
            f"project={self.project}"
        )

    def divergence(self, input: Tensor, target: Tensor) -> Tensor:
        """The divergence :math:`\\ell_s` of this ``kind``, in float32, averaged over examples.

        Example:
            >>> import torch
            >>> from mtlkit import SmartLoss
            >>> a = torch.tensor([[2.0, 0.0]])
            >>> SmartLoss().divergence(a, a).item()
            0.0
        """
        return _divergence(self.kind, input, target)

    def _step(self, noise: Tensor, grad: Tensor) -> Tensor:
        if self.project:
            noise = noise + self.step_size * _normalize(grad, self.norm)
            return _project(noise, self.norm, self.epsilon)
        return _normalize(noise + self.step_size * grad, self.norm)

    def forward(
        self,
        forward_fn: Callable[[Tensor], Tensor],
        embeddings: Tensor,
        clean_output: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Compute :math:`\\mathcal{R}_s` for one batch.

        Args:
            forward_fn: maps (perturbed) word embeddings, shaped like ``embeddings``, to the
                task output, shaped like ``clean_output``.
            embeddings: word embeddings ``(..., tokens, hidden)``; for a Hugging Face encoder
                the output of its input-embedding layer (see :func:`hf_smart_inputs`).
            clean_output: ``forward_fn(embeddings)``, computed once by the caller for its task
                loss; used detached as the attack's target and undetached in the final term.
            attention_mask: optional ``(..., tokens)``; positions where it is 0 get no noise.

        Returns:
            The regularizer, a non-negative float32 scalar.

        Example:
            >>> import torch
            >>> from mtlkit import SmartLoss
            >>> w = torch.nn.Linear(4, 1)
            >>> fn = lambda e: w(e).sum(dim=(1, 2))
            >>> emb = torch.randn(2, 3, 4)
            >>> SmartLoss(kind="regression", num_steps=0, noise_std=0.0)(fn, emb, fn(emb)).item()
            0.0
        """
        if not callable(forward_fn):
            raise TypeError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
        for name, t in (("embeddings", embeddings), ("clean_output", clean_output)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not embeddings.is_floating_point() or embeddings.dim() < 2:
            raise ValueError(
                "embeddings must be a floating tensor shaped (..., tokens, hidden), got "
                f"dtype {embeddings.dtype} and shape {tuple(embeddings.shape)}"
            )
        mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor):
                raise TypeError(
                    f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}"
                )
            if attention_mask.shape != embeddings.shape[:-1]:
                raise ValueError(
                    f"attention_mask must have shape {tuple(embeddings.shape[:-1])} "
                    f"(embeddings without the hidden dimension), got {tuple(attention_mask.shape)}"
                )
            mask = (attention_mask != 0).unsqueeze(-1).to(embeddings.dtype)

        noise = torch.randn(
            embeddings.shape,
            generator=self.generator,
            dtype=embeddings.dtype,
            device=embeddings.device,
        ).mul_(self.noise_std)
        if mask is not None:
            noise = noise * mask
        target = clean_output.detach()
        base = embeddings.detach()
        bad = torch.zeros((), dtype=torch.bool, device=embeddings.device)
        for _ in range(self.num_steps):
            noise = noise.detach().requires_grad_(True)
            with torch.enable_grad():
                div = self.divergence(forward_fn(base + noise), target)
                grad = None
                if div.requires_grad:
                    (grad,) = torch.autograd.grad(div, noise, allow_unused=True)
            with torch.no_grad():
                if grad is None:  # the output does not depend on the embeddings
                    grad = torch.zeros_like(noise)
                bad = bad | ~torch.isfinite(grad).all()
                noise = self._step(noise.detach(), torch.nan_to_num(grad, 0.0, 0.0, 0.0))
                if mask is not None:
                    noise = noise * mask
        noise = noise.detach()
        reg = self.divergence(forward_fn(embeddings + noise), clean_output)
        if bool(bad | ~torch.isfinite(reg)):  # one host sync per call
            msg = "SmartLoss: non-finite gradient or divergence; returning 0 for this batch"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)
            return torch.zeros((), dtype=torch.float32, device=reg.device)
        return reg
