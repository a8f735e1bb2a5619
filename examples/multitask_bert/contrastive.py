"""The SimCSE pre-training stage (``--contrastive``, the paper's section 4), from mtlkit's parts.

Before fine-tuning, the shared encoder is trained with ``mtlkit.SimCSELoss`` (in-batch
negatives) in two stages: unsupervised, on every training sentence of the tasks, the two views
of a sentence differing only by dropout (``mtlkit.unsupervised_pairs``); then supervised, on
positive pairs mined by ``mtlkit.mine_pairs`` (Quora duplicates, STS-B pairs scored 4 or more).
``mtlkit.group_ids`` gives rows that share a sentence one id, so a duplicate sentence in the
batch is not counted as a negative. Each stage's batches are drawn by ``mtlkit.MultiTaskLoader``
(one task, ``steps`` steps, reshuffling each pass), length-grouped like the training batches.

Under torchrun each rank embeds an equal share of every batch (the last ``B % world`` rows are
dropped), ``SimCSELoss(gather_across_ranks=True)`` contrasts against the global batch, and the
gradients are averaged across ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

import mtlkit

from .batching import multitask_loader
from .data import TaskSplit, TokenCache
from .distributed import DistEnv, average_gradients
from .model import MultiTaskBert
from .optim import adamw

logger = logging.getLogger(__name__)

# (task, label column, positive threshold) of the supervised stage's mining
MINING = (("qqp", "is_duplicate", 1.0), ("sts", "similarity", 4.0))


def stage_pairs(splits: dict[str, TaskSplit]) -> dict[str, list[mtlkit.ContrastivePair]]:
    """``{"unsup": pairs, "sup": pairs}`` from the training splits given.

    >>> from pathlib import Path
    >>> qqp = TaskSplit("qqp", "train", Path("x"), ["a", "b"], ["q1", "q2"], ["p1", "p2"],
    ...                 [1.0, 0.0])
    >>> pairs = stage_pairs({"qqp": qqp})
    >>> pairs["sup"], len(pairs["unsup"])
    ([ContrastivePair(anchor='q1', positive='p1', negative=None)], 4)
    """
    sentences = [s for sp in splits.values() for s in sp.sent1 + (sp.sent2 or [])]
    sup: list[mtlkit.ContrastivePair] = []
    for task, column, threshold in MINING:
        sp = splits.get(task)
        if sp is None or sp.labels is None or sp.sent2 is None:
            continue
        records = [{"sentence1": a, "sentence2": b, column: y}
                   for a, b, y in zip(sp.sent1, sp.sent2, sp.labels, strict=True)]
        sup += mtlkit.mine_pairs(records, label_key=column, threshold=threshold)
    return {"unsup": mtlkit.unsupervised_pairs(sentences), "sup": sup}


def _as_split(name: str, pairs: list[mtlkit.ContrastivePair], like: TaskSplit) -> TaskSplit:
    ids = [str(i) for i in range(len(pairs))]
    anchors = [p.anchor for p in pairs]
    if name == "unsup":  # the same sentence twice: one tokenization, two dropout passes
        return TaskSplit("sst", "simcse-unsup", like.path, ids, anchors)
    return TaskSplit("qqp", "simcse-sup", like.path, ids, anchors, [p.positive for p in pairs])


def contrastive_stage(model: MultiTaskBert, splits: dict[str, TaskSplit], cache: TokenCache,
                      cfg: Any, device: torch.device, autocast: Callable[[], Any],
                      env: DistEnv | None = None) -> dict[str, list[float]]:
    """Run both stages on ``model``'s shared encoder; returns each stage's loss per step.

    ``cfg`` gives ``contrastive_{unsup,sup}_steps``, ``contrastive_batch_size``,
    ``contrastive_lr`` (default ``lr``), ``contrastive_temperature``, ``clip_norm`` and ``seed``.

    Raises:
        ValueError: ``model`` has no single shared encoder, or a batch smaller than the world.
    """
    env = env or DistEnv(device=device)
    if model.task_encoders is not None or model.routed:
        raise ValueError("--contrastive: needs one shared encoder, got a mixture")
    if cfg.contrastive_batch_size < env.world:
        raise ValueError(f"--contrastive-batch-size: expected at least one row per process "
                         f"({env.world}), got {cfg.contrastive_batch_size}")
    loss_fn = mtlkit.SimCSELoss(temperature=cfg.contrastive_temperature,
                                gather_across_ranks=env.distributed)
    params = [p for p in model.encoder_for("sst").parameters() if p.requires_grad]
    opt = adamw(params, cfg.contrastive_lr or cfg.lr)
    like = next(iter(splits.values()))
    losses: dict[str, list[float]] = {}
    model.train()
    steps = {"unsup": cfg.contrastive_unsup_steps, "sup": cfg.contrastive_sup_steps}
    for name, pairs in stage_pairs(splits).items():
        if not steps[name] or not pairs:
            continue
        ds = cache.get(_as_split(name, pairs, like), "separate")
        ids = torch.tensor(mtlkit.group_ids(pairs))
        loader = multitask_loader({name: ds}, {name: cfg.contrastive_batch_size}, "interleaved",
                                  cfg.seed, env, steps_per_epoch=steps[name], equal_shards=True)
        losses[name] = []
        for item in loader:
            batch = item[name]
            if int(batch.pop("rows_here", 1)) == 0:  # fewer rows than ranks: skip
                continue                               # (the same on every rank)
            batch.pop("rows_global", None)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                z1 = model.embed("sst", batch)
                z2 = model.embed("sst", batch, suffix="_2" if name == "sup" else "")
            loss = loss_fn(z1.float(), z2.float(), ids=ids[batch["index"].cpu()].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params, env)  # no-op in one process
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            opt.step()
            losses[name].append(round(float(loss.detach()), 5))
            if len(losses[name]) % 20 == 0 or len(losses[name]) == steps[name]:
                logger.info("contrastive %s step %d/%d loss %.4f", name, len(losses[name]),
                            steps[name], losses[name][-1])
    return losses
