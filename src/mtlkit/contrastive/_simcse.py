"""In-batch contrastive learning: SimCSE / InfoNCE with hard negatives, id masking and gathering.

The paper (section 4, "Contrastive Learning") pre-trains the encoder with SimCSE (Gao et al.,
2021): unsupervised, where the two views of a sentence are two dropout passes, and supervised,
where positives are mined from labelled paraphrase and similarity pairs
(:func:`~mtlkit.mine_pairs`). For anchor :math:`i` of a batch of :math:`N` rows the loss is

.. math::

    \\ell_i = -\\log \\frac{e^{\\cos(h_i, h_i^+)/\\tau}}
        {\\sum_{j=1}^{N} e^{\\cos(h_i, h_j^+)/\\tau} + \\sum_{j=1}^{N} e^{\\cos(h_i, h_j^-)/\\tau}}

and the loss is the mean of :math:`\\ell_i`. The paper's Eq. (2) writes
:math:`\\mathrm{sim}(h_j, h_j^+)` in the denominator, which does not depend on :math:`i`; that is
a typo, and the standard form above (SimCSE's code, sentence-transformers'
``MultipleNegativesRankingLoss``) is what is implemented.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlkit._distributed import all_gather_with_grad, get_rank, get_world_size
from mtlkit.contrastive._checks import check_call, check_ids, check_options, raise_non_finite


def _gather_ids(ids: torch.Tensor) -> torch.Tensor:
    chunks = [torch.empty_like(ids) for _ in range(get_world_size())]
    torch.distributed.all_gather(chunks, ids.contiguous())
    return torch.cat(chunks)


def _direction_loss(
    logits: torch.Tensor, targets: torch.Tensor, anchor_ids: torch.Tensor | None,
    candidate_ids: torch.Tensor | None,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (anchors x candidates), without the false negatives.

    Only the first ``len(candidate_ids)`` columns (the in-batch positives) are masked: candidate
    ``j`` is dropped from anchor ``i``'s denominator when it shares the anchor's id and is not the
    anchor's own positive.
    """
    if anchor_ids is not None and candidate_ids is not None:
        same = anchor_ids[:, None] == candidate_ids[None, :]
        same[torch.arange(len(targets), device=logits.device), targets] = False
        mask = F.pad(same, (0, logits.shape[1] - same.shape[1]), value=False)
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    z3: torch.Tensor | None = None,
    ids: torch.Tensor | Sequence[int] | None = None,
    *,
    temperature: float = 0.05,
    symmetric: bool = False,
    hard_negative_weight: float = 0.0,
    gather_across_ranks: bool = False,
) -> torch.Tensor:
    """SimCSE's InfoNCE loss with in-batch negatives: the function behind :class:`SimCSELoss`.

    Args:
        z1: Anchors, shape ``(B, D)``.
        z2: Positives, shape ``(B, D)``: ``z2[i]`` is the positive of ``z1[i]`` and every other
            row of ``z2`` is an in-batch negative of it.
        z3: Optional hard negatives, shape ``(B, D)``; every row is a negative for every anchor.
        ids: Optional per-row integer ids, shape ``(B,)``. A candidate ``z2[j]`` (``j != i``) with
            ``ids[j] == ids[i]`` is a false negative (a duplicate sentence) and is left out of
            anchor ``i``'s denominator. Hard negatives are never masked.
        temperature: :math:`\\tau > 0`; the logits are cosine similarities divided by it.
        symmetric: Also contrast each ``z2[i]`` against all ``z1`` rows (hard negatives do not
            enter that direction) and average the two directions.
        hard_negative_weight: Added to the logit of each anchor's own hard negative ``z3[i]``
            (SimCSE's ``hard_negative_weight``, in logit units); needs ``z3``.
        gather_across_ranks: Under :mod:`torch.distributed`, gather the candidates (and ids)
            from every rank with gradients flowing back, so each rank contrasts its anchors
            against the global batch. The result is the mean over this rank's anchors; with
            DistributedDataParallel's gradient averaging, training equals one process on the
            concatenated batch. Every rank must pass the same batch size and the same
            optional arguments (``z3``, ``ids``, ``symmetric``), as for any collective.

    Returns:
        The scalar loss, in float32 for half-precision inputs (the softmax runs in float32),
        else in the inputs' dtype.

    Raises:
        TypeError: Non-tensor or non-floating embeddings, non-integer ids.
        ValueError: Shape mismatch, empty batch, a single candidate (batch of 1 without
            negatives), non-positive temperature, a hard-negative weight without ``z3``,
            NaN or infinite embeddings (checked through the loss: one host synchronization
            per call).

    Example:
        >>> import torch
        >>> from mtlkit import info_nce
        >>> z = torch.nn.functional.one_hot(torch.arange(4), 8).float()
        >>> round(info_nce(z, z, temperature=1.0).item(), 4)  # log(1 + 3 / e)
        0.7437
    """
    world = check_call(z1, z2, z3, ids, temperature, hard_negative_weight, gather_across_ranks)
    batch = z1.shape[0]
    id_tensor = None if ids is None else check_ids(ids, batch, z1.device)
    a1, a2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    a3 = None if z3 is None else F.normalize(z3, dim=-1)
    if world > 1:
        c1 = all_gather_with_grad(a1) if symmetric else None
        c2 = all_gather_with_grad(a2)
        c3 = None if a3 is None else all_gather_with_grad(a3)
        all_ids = None if id_tensor is None else _gather_ids(id_tensor)
        offset = get_rank() * batch
    else:
        c1, c2, c3, all_ids, offset = None, a2, a3, id_tensor, 0

    candidates = c2 if c3 is None else torch.cat([c2, c3])
    logits = _to_float32_if_half(a1 @ candidates.T) / temperature
    rows = torch.arange(batch, device=z1.device)
    targets = rows + offset
    if hard_negative_weight != 0.0:
        bonus = torch.full((batch,), hard_negative_weight, dtype=logits.dtype, device=logits.device)
        logits = logits.index_put((rows, c2.shape[0] + targets), bonus, accumulate=True)
    loss = _direction_loss(logits, targets, id_tensor, all_ids)
    if symmetric:
        # one process: the reverse logits are a block of the forward ones
        back = logits[:, :batch].T if c1 is None else _to_float32_if_half(a2 @ c1.T) / temperature
        loss = (loss + _direction_loss(back, targets, id_tensor, all_ids)) / 2
    if not bool(torch.isfinite(loss.detach())):  # one host sync; diagnose only on failure
        raise_non_finite(z1, z2, z3, temperature)
    return loss


def _to_float32_if_half(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


class SimCSELoss(nn.Module):
    """SimCSE's contrastive loss (Gao et al., 2021) as a module: see :func:`info_nce`.

    ``z1[i]`` and ``z2[i]`` are a positive pair; every other ``z2`` row, and every ``z3`` row when
    hard negatives are given, is a negative. Unsupervised SimCSE passes the same sentences twice
    through the encoder in train mode (two dropout masks); supervised SimCSE passes mined
    ``(anchor, positive, hard negative)`` triplets (:func:`~mtlkit.mine_pairs`).

    Departures from the paper: Eq. (2)'s denominator is read as the standard
    :math:`\\sum_j e^{\\cos(h_i, h_j^+)/\\tau}` (the printed one does not depend on :math:`i`);
    ``symmetric``, ``ids`` and ``gather_across_ranks`` are additions.

    Args:
        temperature: :math:`\\tau > 0` (SimCSE uses 0.05; sentence-transformers' ``scale`` is
            :math:`1/\\tau`).
        symmetric: Average with the reverse direction (``z2`` anchors against ``z1``).
        hard_negative_weight: Logit bonus for each anchor's own hard negative (SimCSE's option).
        gather_across_ranks: Contrast against the batches of every rank (see :func:`info_nce`).

    Example:
        >>> import torch
        >>> from mtlkit import SimCSELoss
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> encoder = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Dropout(0.1))
        >>> x = torch.randn(16, 8)
        >>> loss = SimCSELoss(temperature=0.05)(encoder(x), encoder(x))  # two dropout views
        >>> loss.backward()
        >>> bool(loss > 0), encoder[0].weight.grad.shape
        (True, torch.Size([4, 8]))
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        hard_negative_weight: float = 0.0,
        gather_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_options(temperature, hard_negative_weight)
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.hard_negative_weight = float(hard_negative_weight)
        self.gather_across_ranks = bool(gather_across_ranks)

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        z3: torch.Tensor | None = None,
        ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The mean InfoNCE loss of the batch (arguments as in :func:`info_nce`).

        Example:
            >>> import torch
            >>> from mtlkit import SimCSELoss
            >>> z1, z2, z3 = torch.randn(3, 4, 8).unbind(0)
            >>> SimCSELoss()(z1, z2, z3, ids=[0, 1, 1, 2]).shape
            torch.Size([])
        """
        return info_nce(
            z1, z2, z3, ids,
            temperature=self.temperature,
            symmetric=self.symmetric,
            hard_negative_weight=self.hard_negative_weight,
            gather_across_ranks=self.gather_across_ranks,
        )

    def extra_repr(self) -> str:
        """The options, shown by ``repr()``.

        Example:
            >>> from mtlkit import SimCSELoss
            >>> SimCSELoss(0.1, symmetric=True).extra_repr().split(", ")[:2]
            ['temperature=0.1', 'symmetric=True']
        """
        return (
            f"temperature={self.temperature}, symmetric={self.symmetric}, "
            f"hard_negative_weight={self.hard_negative_weight}, "
            f"gather_across_ranks={self.gather_across_ranks}"
        )
