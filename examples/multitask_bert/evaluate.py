"""Metrics (accuracy, Pearson, the paper's Eq. 7) and batched prediction over a split."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import TokenizedTask
from .distributed import DistEnv, all_gather_objects
from .model import MultiTaskBert, predict
from .precision import Precision


def accuracy(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Fraction of positions where ``pred == gold``.

    >>> accuracy([1, 2, 3, 4], [1, 2, 0, 4])
    0.75
    """
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold differ in length: {len(pred)} vs {len(gold)}")
    if not pred:
        raise ValueError("accuracy of an empty sequence is undefined")
    return sum(int(p == g) for p, g in zip(pred, gold, strict=True)) / len(pred)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient; 0.0 when either side is constant.

    >>> round(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 4)
    0.9934
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 2:
        raise ValueError("pearson needs at least 2 points")
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0.0 or syy == 0.0:
        return 0.0
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def overall_score(sst_acc: float, qqp_acc: float, sts_corr: float) -> float:
    """The paper's Eq. (7): ``(SST acc + QQP acc + (STS Pearson + 1) / 2) / 3``.

    >>> round(overall_score(0.450, 0.805, 0.374), 3)  # the paper's baseline row
    0.647
    """
    return (sst_acc + qqp_acc + (sts_corr + 1.0) / 2.0) / 3.0


@dataclass
class Predictions:
    """Per-row predictions of one split, in file order; ``outputs`` the model's raw outputs
    they were made from (:func:`model_outputs`), when known."""

    task: str
    ids: list[str]
    pred: list[float]
    confidence: list[float]
    gold: list[float] | None
    outputs: torch.Tensor | None = None

    def metric(self) -> float:
        """Accuracy (SST, QQP) or Pearson (STS) against the gold labels."""
        if self.gold is None:
            raise ValueError(f"{self.task}: no gold labels (a test split)")
        if self.task == "sts":
            return pearson(self.pred, self.gold)
        return accuracy(self.pred, self.gold)


@torch.no_grad()
def _rank_outputs(model: MultiTaskBert, ds: TokenizedTask, batch_size: int,
                  device: torch.device, precision: Precision | None, env: DistEnv,
                  symmetric: bool, progress: bool) -> dict[int, torch.Tensor]:
    """This rank's rows of ``ds`` (every ``world``-th of the length-sorted order): row index to
    the model's float32 output on CPU, averaged over both orders when ``symmetric``."""
    was_training = model.training
    model.eval()
    n = len(ds)
    order = sorted(range(n), key=lambda i: -ds.lengths[i])[env.rank::env.world]
    offsets = [0, n] if symmetric and ds.has_both_orders else [0]
    batches = [[i + offset for i in order[s:s + batch_size]]
               for offset in offsets for s in range(0, len(order), batch_size)]
    # an own generator: evaluating never draws from the global RNG (exact --resume)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=ds.collate,
                        generator=torch.Generator())
    outputs: dict[int, torch.Tensor] = {}
    bar = tqdm(loader, desc=f"{ds.task} {ds.split.split}", leave=False, dynamic_ncols=True,
               disable=not progress or not env.is_main)
    try:
        for batch in bar:
            idx = batch.pop("index").tolist()
            batch.pop("labels", None)
            batch = {k: v.to(device) for k, v in batch.items()}
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                out = model(ds.task, batch).float().cpu()
            for i, o in zip(idx, out, strict=True):
                outputs[i] = o if i not in outputs else outputs[i] + o
    finally:
        bar.close()
        model.train(was_training)
    return {i: o / len(offsets) for i, o in outputs.items()}


def model_outputs(model: MultiTaskBert, ds: TokenizedTask, batch_size: int,
                  device: torch.device, precision: Precision | None = None,
                  symmetric: bool = False, progress: bool = False) -> torch.Tensor:
    """The model's raw outputs for every row of ``ds``, in file order, one process: SST logits
    ``(n, 5)``, the QQP logit or the STS score ``(n,)`` (both orders averaged when
    ``symmetric``, as in :func:`predict_split`). :func:`~multitask_bert.model.predict` turns
    them into predictions; :mod:`~multitask_bert.ensemble` averages several models' outputs.
    """
    outputs = _rank_outputs(model, ds, batch_size, device, precision, DistEnv(device=device),
                            symmetric, progress)
    return torch.stack([outputs[i] for i in range(len(ds))])


def predict_split(model: MultiTaskBert, ds: TokenizedTask, batch_size: int,
                  device: torch.device, precision: Precision | None = None,
                  env: DistEnv | None = None, symmetric: bool = False,
                  progress: bool = False) -> Predictions:
    """Run ``model`` over every row of ``ds`` (length-sorted batches, results in file order).

    ``symmetric=True`` (a dataset tokenized with both orders of each pair, see
    :class:`~multitask_bert.data.TokenizedTask`): the model's outputs for ``s1, s2`` and
    ``s2, s1`` are averaged before the prediction is made (QQP logits, STS scores). Without
    both orders it is ignored.

    Under torchrun (``env.world > 1``) each rank predicts every ``world``-th row of the
    length-sorted order and the ranks' rows are all-gathered, so every rank returns the
    predictions of every row, in file order. ``progress`` shows a progress bar (main process).
    """
    env = env or DistEnv(device=device)
    outputs = _rank_outputs(model, ds, batch_size, device, precision, env, symmetric, progress)
    rows: list[tuple[int, float, float, torch.Tensor]] = []
    if outputs:
        idx = list(outputs)
        p, c = predict(ds.task, torch.stack([outputs[i] for i in idx]))
        rows = list(zip(idx, p.tolist(), c.tolist(), [outputs[i] for i in idx], strict=True))
    n = len(ds)
    pred: list[float] = [0.0] * n
    conf: list[float] = [0.0] * n
    raw = [torch.empty(0)] * n  # every row is filled in (checked below)
    seen = 0
    for part in all_gather_objects(rows, env):
        for i, pi, ci, oi in part:
            pred[i], conf[i], raw[i] = pi, ci, oi
        seen += len(part)
    if seen != n:
        raise RuntimeError(f"{ds.task}: gathered {seen} predictions for {n} rows")
    gold = None if ds.split.labels is None else [float(y) for y in ds.split.labels]
    return Predictions(ds.task, list(ds.split.ids), pred, conf, gold,
                       torch.stack(raw) if n else None)


def dev_scores(preds: dict[str, Predictions]) -> dict[str, float]:
    """Per-task dev metrics plus ``overall`` (Eq. 7; a missing task is left out of it)."""
    scores = {task: p.metric() for task, p in preds.items()}
    scores["overall"] = overall_of(scores)
    return scores


def overall_of(scores: Mapping[str, float]) -> float:
    """Eq. (7) from per-task scores; with fewer tasks (single-task runs), the mean of the
    normalised scores of those present.

    >>> round(overall_of({"sst": 0.5, "qqp": 0.8, "sts": 0.8}), 4)
    0.7333
    >>> overall_of({"sts": 0.6})
    0.8
    """
    tasks = {t: v for t, v in scores.items() if t != "overall"}
    if all(t in tasks for t in ("sst", "qqp", "sts")):
        return overall_score(tasks["sst"], tasks["qqp"], tasks["sts"])
    parts = [(v + 1) / 2 if t == "sts" else v for t, v in tasks.items()]
    return sum(parts) / len(parts)
