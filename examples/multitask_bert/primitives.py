"""The mtlkit primitives in the pipeline: gradient combination, SMART and the LoRA mixture.

Each is the library's public object, used the way its guide shows: ``mtlkit.PCGrad`` (or
``mtlkit.MultiTaskOptimizer`` with another ``mtlkit.weighting``) over the shared encoder,
``mtlkit.SmartLoss`` with ``mtlkit.hf_smart_inputs`` (one binary logit for Quora,
``kind="binary"``), and ``mtlkit.LoRAMoE``. The SimCSE stage is in
:mod:`multitask_bert.contrastive`, the batch schedule (``mtlkit.MultiTaskLoader``) in
:mod:`multitask_bert.batching`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import mtlkit

from .model import MultiTaskBert

SMART_KINDS = {"sst": "classification", "qqp": "binary", "sts": "regression"}
"""How SMART compares each task's outputs: 5-way logits, one Bernoulli logit, a score."""


SEEDED = ("pcgrad", "random", "gradvac")
"""The weightings that draw random numbers: seeded with ``--seed`` (their generator is state)."""

LOSS_WEIGHTINGS = ("uncertainty", "dwa", "famo")
"""The weightings of the losses (``mtlkit.weighting.LossWeighting``): built for the run's T."""


def make_weighting(name: str, num_tasks: int, seed: int,
                   steps_per_epoch: int) -> mtlkit.weighting.Weighting | nn.Module:
    """``mtlkit.weighting.by_name(name)`` with what the run knows: the seed of the random ones,
    ``num_tasks`` for the loss weightings (uncertainty weighting's log-variances exist from the
    start) and, for DWA, the epoch length (its weights change once per epoch).

    >>> make_weighting("dwa", 3, 0, 100)
    DWA(num_tasks=3, temperature=2.0, steps_per_epoch=100)
    >>> make_weighting("uncertainty", 3, 0, 100).log_vars.shape  # trained with the model
    torch.Size([3])
    """
    kwargs: dict[str, Any] = {}
    if name in SEEDED:
        kwargs["seed"] = seed
    if name in LOSS_WEIGHTINGS:
        kwargs["num_tasks"] = num_tasks
    if name == "dwa":
        kwargs["steps_per_epoch"] = steps_per_epoch
    return mtlkit.weighting.by_name(name, **kwargs)


def gradient_combiner(optimizer: torch.optim.Optimizer, model: MultiTaskBert, weighting: str,
                      seed: int, num_tasks: int, steps_per_epoch: int) -> Any:
    """The optimizer wrapper that combines the task gradients of the shared encoder.

    ``"pcgrad"`` is ``mtlkit.PCGrad`` (the paper's surgery); any other name of
    ``mtlkit.weighting.NAMES`` is ``mtlkit.MultiTaskOptimizer`` with that weighting
    (:func:`make_weighting`). A loss weighting's own parameters (uncertainty weighting's
    log-variances) join ``optimizer`` as one more parameter group at its default learning
    rate. Both sum the combined task gradients (``reduction="sum"``: the plain sum is what
    they replace) and, under a process group, average the per-task gradients over the ranks
    before combining (``sync="tasks"``, heads included), so the trainer must not average them
    again.

    Raises:
        ValueError: the model has no shared encoder (``--mixture full``).
    """
    shared = model.shared_parameters()
    if not shared:
        raise ValueError("--weighting: needs a shared encoder, got one encoder per task "
                         "(--mixture full)")
    if weighting == "pcgrad":
        return mtlkit.PCGrad(optimizer, shared_params=shared, reduction="sum", seed=seed,
                             sync="tasks")
    method = make_weighting(weighting, num_tasks, seed, steps_per_epoch)
    own = list(method.parameters()) if isinstance(method, nn.Module) else []
    if own:  # MultiTaskOptimizer refuses a weighting whose parameters nobody trains
        optimizer.add_param_group({"params": own})
    return mtlkit.MultiTaskOptimizer(optimizer, method, shared_params=shared, reduction="sum",
                                     sync="tasks")


class SmartTerms:
    """``weight * SmartLoss`` for each task's batch (the paper's Eq. 4 regulariser).

    The clean output and the perturbed ones come from the same ``forward_fn`` of
    ``mtlkit.hf_smart_inputs`` over the task's encoder and head, so the task loss is computed
    on the clean output it returns.

    Args:
        weight: :math:`\\lambda_s`, the term's weight.
        mode: ``"projected"`` (the paper's ball of radius 1e-5, ``project=True``) or
            ``"normalized"`` (unit-norm noise, ``project=False``).
    """

    def __init__(self, weight: float, mode: str = "projected") -> None:
        if mode not in ("projected", "normalized"):
            raise ValueError(f"--smart-mode: expected projected or normalized, got {mode!r}")
        self.weight = weight
        self.losses = {task: mtlkit.SmartLoss(kind=kind, project=mode == "projected")
                       for task, kind in SMART_KINDS.items()}

    def output_and_term(self, model: MultiTaskBert, task: str,
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(task output, weight * SMART term)`` for one batch (cross encoding)."""
        encoder = model.encoder_for(task)
        embeddings, forward_fn = mtlkit.hf_smart_inputs(
            encoder, lambda out: model.output_of_encoding(task, out, batch), batch["input_ids"],
            **model.encoder_inputs(task, batch))
        output = forward_fn(embeddings)
        term = self.losses[task](forward_fn, embeddings, output,
                                 attention_mask=batch["attention_mask"])
        return output, self.weight * term


def lora_mixture(encoder: nn.Module, tasks: list[str] | tuple[str, ...], r: int,
                 alpha: float) -> mtlkit.LoRAMoE:
    """``mtlkit.LoRAMoE``: one LoRA expert per task on the frozen ``encoder``."""
    return mtlkit.LoRAMoE(encoder, mtlkit.LoRAMoEConfig(tasks=list(tasks), r=r, alpha=alpha))
