"""SMART's smoothness-inducing adversarial regularizer as a module (Jiang et al., 2020; Eq. 4).

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

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mtlkit.smart._options import Kind, Norm, check_attack, check_kind
from mtlkit.smart.functional import divergence, smart_loss


class SmartLoss(nn.Module):
    """SMART's smoothness-inducing adversarial regularizer :math:`\\mathcal{R}_s` (Eq. 4).

    Noise starts as :math:`\\mathcal{N}(0, \\sigma^2)` on the word embeddings (zero at padding
    positions), takes ``num_steps`` ascent steps on the divergence between the perturbed and the
    (detached) clean output, with respect to the noise only, and the returned value is the
    divergence at the final perturbation, through which gradients reach the parameters on both
    the perturbed and the clean side. Multiply it by :math:`\\lambda_s` yourself. The module
    holds the options; the computation is :func:`mtlkit.smart.functional.smart_loss`.

    Args:
        kind: what the output is (see :mod:`mtlkit.smart.functional`): ``"classification"``
            (``(..., classes)`` logits, ``classes >= 2``, symmetric KL of softmax laws),
            ``"binary"`` (every element is one binary logit, e.g. a ``(B,)`` paraphrase logit;
            symmetric KL of Bernoulli laws) or ``"regression"`` (mean squared error). A single
            logit is ``"binary"``: ``"classification"`` with a last dimension of 1 raises
            ``ValueError``. Computed in float32.
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
    the embeddings it is 0 (the zero gradient gives a zero step, not NaN). Non-finite
    ``embeddings`` raise ``ValueError``. If the model's gradient or the result is not finite
    (finite embeddings), a ``RuntimeWarning`` is issued and a detached 0 is returned, so no NaN
    reaches the model. One host synchronization per call.

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
        check_kind(kind)
        check_attack(epsilon=epsilon, noise_std=noise_std, step_size=step_size,
                     num_steps=num_steps, norm=norm, project=project, generator=generator)
        self.kind, self.norm, self.project = kind, norm, project
        self.epsilon, self.noise_std = float(epsilon), float(noise_std)
        self.step_size = float(step_size)
        self.num_steps = num_steps
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
        return divergence(input, target, self.kind)

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
                the output of its input-embedding layer (see :func:`mtlkit.hf_smart_inputs`).
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
        return smart_loss(
            forward_fn, embeddings, clean_output, attention_mask,
            kind=self.kind, epsilon=self.epsilon, noise_std=self.noise_std,
            step_size=self.step_size, num_steps=self.num_steps, norm=self.norm,
            project=self.project, generator=self.generator,
        )
