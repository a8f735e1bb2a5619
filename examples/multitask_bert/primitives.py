"""Wiring of the mtlkit primitives into the pipeline, against DESIGN.md's public API contract.

Each primitive is imported lazily through :func:`require`, so presets that do not use it run
without it and presets that do fail early with ``preset needs mtlkit.X``.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from .batching import make_loader
from .data import TaskSplit, TokenCache, TokenizedTask, mine_positive_pairs
from .distributed import DistEnv, ShardCollate, average_gradients
from .model import MultiTaskBert
from .optim import adamw

logger = logging.getLogger(__name__)


def require(name: str, why: str) -> Any:
    """``mtlkit.<name>``, or a clear error saying which flag needs it.

    >>> require("__version__", "test") is not None
    True
    """
    try:
        module = importlib.import_module("mtlkit")
        return getattr(module, name)
    except (ImportError, AttributeError):
        raise RuntimeError(f"{why}: preset needs mtlkit.{name}, which this mtlkit install "
                           f"does not provide (pip install -e . from a checkout that has "
                           f"it)") from None


# ----------------------------------------------------------------------------- PCGrad


def wrap_surgery(optimizer: torch.optim.Optimizer, model: MultiTaskBert, seed: int) -> Any:
    """``PCGrad(optimizer, shared_params=encoder params, reduction="sum", seed=seed)``.

    ``sync="tasks"``: under a process group PCGrad all-reduces the per-task gradients before
    surgery (the same algorithm as one process on the global batch), heads included, so the
    trainer must not average the gradients again.
    """
    pcgrad = require("PCGrad", "--surgery")
    shared = model.shared_parameters()
    if not shared:
        raise ValueError("--surgery needs a shared encoder (not --mixture full)")
    return pcgrad(optimizer, shared_params=shared, reduction="sum", seed=seed, sync="tasks")


# ----------------------------------------------------------------------------- SMART


class SmartTerm:
    """Adds ``weight * SmartLoss(forward_fn, word_embeddings, output)`` to a task's loss.

    QQP's single logit ``z`` is given to SMART as two-class logits ``[0, z]`` (whose softmax
    is the Bernoulli law ``sigmoid(z)``); STS's score as a ``(B, 1)`` regression output.
    """

    def __init__(self, weight: float, mode: str = "projected") -> None:
        smart_cls = require("SmartLoss", "--smart-weight")
        self.weight = weight
        # projected: the paper's epsilon ball (1e-5); normalized: unit-norm noise, no projection
        project = mode == "projected"
        self.losses = {"classification": smart_cls(kind="classification", project=project),
                       "regression": smart_cls(kind="regression", project=project)}

    @staticmethod
    def _adapt(task: str, out: torch.Tensor) -> torch.Tensor:
        if task == "qqp":
            return torch.stack([torch.zeros_like(out), out], dim=-1)
        if task == "sts":
            return out.unsqueeze(-1)
        return out

    def task_output_and_loss(self, model: MultiTaskBert, task: str,
                             batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(task output, weighted SMART term) for one batch."""
        if model.encoding != "cross" and task != "sst":
            raise ValueError("--smart-weight needs --encoding cross for pair tasks")
        emb = model.input_embeddings(task)(batch["input_ids"])
        out = model(task, batch, inputs_embeds=emb)

        def forward_fn(e: torch.Tensor) -> torch.Tensor:
            return self._adapt(task, model(task, batch, inputs_embeds=e))

        kind = "regression" if task == "sts" else "classification"
        reg = self.losses[kind](forward_fn, emb, self._adapt(task, out),
                                attention_mask=batch["attention_mask"])
        return out, self.weight * reg


# ----------------------------------------------------------------------------- LoRAMoE


def build_lora_moe(encoder: nn.Module, tasks: list[str], r: int, alpha: float) -> nn.Module:
    """``LoRAMoE(encoder, tasks=tasks, r=r, alpha=alpha)``: one LoRA expert per task."""
    lora_moe = require("LoRAMoE", "--mixture lora")
    return lora_moe(encoder, tasks=list(tasks), r=r, alpha=alpha)


# ----------------------------------------------------------------------------- MultiTaskLoader


def mtlkit_loader(loaders: dict[str, Any], mode: str, seed: int) -> Any:
    """``MultiTaskLoader(loaders, mode=mode, seed=seed)`` over per-task DataLoaders."""
    loader_cls = require("MultiTaskLoader", "--loader mtlkit")
    return loader_cls(loaders, mode=mode, seed=seed)


def distributed_task_loaders(train_sets: dict[str, TokenizedTask], batch_sizes: dict[str, int],
                             seed: int, env: DistEnv) -> dict[str, DataLoader]:
    """Per-task DataLoaders over a ``DistributedSampler`` each (``--loader mtlkit`` under
    torchrun): disjoint rows per rank, ``ceil(batch_sizes[task] / world)`` rows per rank and
    step, the same number of batches on every rank. MultiTaskLoader calls their
    ``set_epoch``."""
    out = {}
    for k, (task, ds) in enumerate(train_sets.items()):
        per_rank = math.ceil(batch_sizes[task] / env.world)
        if per_rank * env.world != batch_sizes[task]:
            logger.warning("%s: batch size %d is not a multiple of the world size %d: the "
                           "global batch is %d", task, batch_sizes[task], env.world,
                           per_rank * env.world)
        sampler = DistributedSampler(ds, num_replicas=env.world, rank=env.rank, shuffle=True,
                                     seed=seed + k, drop_last=False)
        out[task] = DataLoader(ds, batch_sampler=BatchSampler(sampler, per_rank, False),
                               collate_fn=ds.collate,
                               generator=torch.Generator().manual_seed(seed + k))
    return out


def iterate_mtlkit(loader: Any) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Normalise MultiTaskLoader's items to ``{task: batch}`` (interleaved yields a dict;
    the other modes yield ``(task, batch)``)."""
    for item in loader:
        if isinstance(item, dict):
            yield item
        else:
            task, batch = item
            yield {task: batch}


# ----------------------------------------------------------------------------- SimCSE stage


def contrastive_stage(model: MultiTaskBert, splits: dict[str, TaskSplit], cache: TokenCache,
                      *, unsup_steps: int, sup_steps: int, batch_size: int, lr: float,
                      temperature: float, device: torch.device, seed: int,
                      clip_norm: float = 0.0,
                      autocast: Callable[[], Any] | None = None,
                      env: DistEnv | None = None) -> dict[str, float]:
    """SimCSE pre-training of the shared encoder, before fine-tuning (the paper's section 4).

    Unsupervised: every training sentence of the tasks given, two dropout passes as the positive
    pair (``SimCSELoss(z1, z2)``). Supervised: positive pairs mined from QQP duplicates and STS
    pairs scored >= 4. In-batch negatives in both. Returns the last loss of each stage.

    Under torchrun each rank embeds an equal share of every batch (the last ``B % world``
    rows are dropped), ``SimCSELoss(gather_across_ranks=True)`` contrasts against the
    global batch, and the gradients are averaged across ranks.
    """
    env = env or DistEnv(device=device)
    simcse = require("SimCSELoss", "--contrastive")(
        temperature=temperature, **({"gather_across_ranks": True} if env.distributed else {}))
    if model.task_encoders is not None or model.routed:
        raise ValueError("--contrastive needs one shared encoder (not --mixture)")
    params = [p for p in model.encoder_for("sst").parameters() if p.requires_grad]
    opt = adamw(params, lr)
    sentences = [s for sp in splits.values() for s in sp.sent1 + (sp.sent2 or [])]
    pairs = [pr for t in ("qqp", "sts") if t in splits for pr in mine_positive_pairs(splits[t])]
    stages: list[tuple[str, TaskSplit, int]] = []
    if unsup_steps > 0 and sentences:
        ids = [str(i) for i in range(len(sentences))]
        stages.append(("unsup", TaskSplit("sst", "simcse-unsup", splits[next(iter(splits))].path,
                                          ids, sentences), unsup_steps))
    if sup_steps > 0 and pairs:
        a, b = zip(*pairs, strict=True)
        stages.append(("sup", TaskSplit("qqp", "simcse-sup", splits[next(iter(splits))].path,
                                        [str(i) for i in range(len(a))], list(a), list(b)),
                       sup_steps))
    last: dict[str, float] = {}
    model.train()
    for name, split, steps in stages:
        ds = cache.get(split, "separate")
        loader = make_loader(ds, batch_size, shuffle=True, seed=seed,
                             collate=ShardCollate(ds.collate, env, equal=True)
                             if env.distributed else None)
        done, epoch = 0, 0
        while done < steps:
            loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
            for batch in loader:
                if int(batch.pop("rows_here", 1)) == 0:  # fewer rows than ranks: skip
                    continue                           # (the same on every rank)
                batch.pop("rows_global", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                ctx = autocast() if autocast is not None else torch.autocast("cpu", enabled=False)
                with ctx:
                    z1 = model.embed("sst", batch)
                    z2 = model.embed("sst", batch, suffix="_2" if name == "sup" else "")
                loss = simcse(z1.float(), z2.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params, env)  # no-op in one process
                if clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                opt.step()
                done += 1
                last[name] = float(loss.detach())
                if done % 20 == 0 or done == steps:
                    logger.info("contrastive %s step %d/%d loss %.4f", name, done, steps,
                                last[name])
                if done >= steps:
                    break
            epoch += 1
    return last
