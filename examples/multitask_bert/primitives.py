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


def gradient_combiner(optimizer: torch.optim.Optimizer, model: MultiTaskBert, weighting: str,
                      seed: int) -> Any:
    """The optimizer wrapper that combines the task gradients of the shared encoder.

    ``"pcgrad"`` is ``mtlkit.PCGrad`` (the paper's surgery); any other name of
    ``mtlkit.weighting.NAMES`` is ``mtlkit.MultiTaskOptimizer`` with that weighting. Both sum
    the combined task gradients (``reduction="sum"``: the plain sum is what they replace) and,
    under a process group, average the per-task gradients over the ranks before combining
    (``sync="tasks"``, heads included), so the trainer must not average them again.

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
    return mtlkit.MultiTaskOptimizer(optimizer, mtlkit.weighting.by_name(weighting),
                                     shared_params=shared, reduction="sum", sync="tasks")


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
