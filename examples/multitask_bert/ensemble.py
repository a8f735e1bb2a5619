"""Ensembles: several runs trained (a recipe's member groups, ``--preset best``) or finished
runs combined; the best checkpoints' outputs averaged per task.

A single model of this pipeline saturates before a 30-minute budget runs out (SST-5 peaks in
its first epoch, Quora and STS-B gain little in the third), so part of the budget buys more
as a second model than as more epochs of the first. The members are ordinary runs (any flags:
the same recipe at different seeds, or models of some tasks only, ``--tasks``); each is loaded
from its ``metrics.json`` configuration and its best checkpoint and run over the dev and test
sets once (or its saved outputs of them are used: :mod:`~multitask_bert.saved_outputs`), and
each task averages the members trained on it.

Averaging: SST-5 the members' class probabilities (the combined output is their log, so
:func:`~multitask_bert.model.predict` takes the argmax of the mean probability); QQP the
logits, as ``--symmetric-eval`` averages the two orders of a pair; STS-B the scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_latest, previous_path
from .config import RunConfig
from .data import TaskSplit, TokenCache, TokenizedTask, subsample
from .evaluate import Predictions, dev_scores, model_outputs
from .hub_data import load_task_splits
from .model import predict
from .pair_features import CosineFeatures
from .pipeline import build_model, resolve_device
from .precision import resolve_precision
from .report import (
    atomic_write_text,
    errors_markdown,
    qqp_rates,
    write_metrics,
    write_plots,
    write_predictions,
)
from .saved_outputs import load_outputs, weights_digest

logger = logging.getLogger(__name__)


def combine_outputs(task: str, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One output per row from several members' outputs of the same rows (see the module).

    >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> combine_outputs("sst", [a, b]).exp()  # the mean of the two softmaxes
    tensor([[0.5749, 0.4251]])
    >>> combine_outputs("qqp", [torch.tensor([1.0]), torch.tensor([-3.0])])
    tensor([-1.])

    Raises:
        ValueError: no outputs, or outputs of different shapes.
    """
    if not outputs:
        raise ValueError(f"{task}: no member outputs to combine")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"{task}: member outputs of different shapes {sorted(shapes)}")
    stacked = torch.stack([o.float() for o in outputs])
    if task == "sst":
        return stacked.softmax(-1).mean(0).log()
    return stacked.mean(0)


@dataclass
class Member:
    """A finished run used as an ensemble member.

    Attributes:
        out: the run's output directory.
        config: its configuration, from ``metrics.json``.
        metrics: the rest of its ``metrics.json`` (``best_dev``, ``train_seconds``, ...).
    """

    out: Path
    config: RunConfig
    metrics: dict[str, Any]

    @classmethod
    def read(cls, out: str | Path) -> Member:
        """Read ``out/metrics.json``.

        Raises:
            FileNotFoundError: the run has no ``metrics.json`` (it has not finished) or no best
                checkpoint.
        """
        out = Path(out)
        path = out / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {out} is not a finished run of "
                                    "examples/bert_sst_qqp_sts.py")
        best = out / "checkpoints" / "best"
        if not (best.exists() or best.with_name("best.previous").exists()):
            raise FileNotFoundError(f"{best} not found: the run kept no best checkpoint")
        return cls(out, RunConfig.from_metrics(path), json.loads(path.read_text()))

    def outputs(self, splits: dict[str, dict[str, TaskSplit]], device: torch.device,
                batch_size: int = 64, progress: bool = False, saved: bool = True
                ) -> dict[tuple[str, str], torch.Tensor]:
        """The raw outputs of the member's best checkpoint, per ``(task, split)`` of the tasks
        it was trained on, made the way its run made its own predictions (its tokenization,
        ``--symmetric-eval``, ``--precision``, ``--pair-feature``).

        With ``saved``, the outputs its run saved (:mod:`~multitask_bert.saved_outputs`) are
        used where they are of the same weights and rows; the model runs only when some are
        missing."""
        cfg = self.config
        wanted = {(t, s): splits[s][t] for s in splits for t in cfg.tasks if t in splits[s]}
        best = self.out / "checkpoints" / "best"
        if saved:  # the manifest's digest only: the weights are read when the model must run
            listed = best if (best / "manifest.json").is_file() else previous_path(best)
            kept = load_outputs(self.out, wanted, weights_digest(listed))
            if kept.keys() == wanted.keys():
                logger.info("%s: its saved outputs of %s", self.out,
                            ", ".join(f"{t} {s}" for t, s in kept))
                return kept
        model, tokenizer = build_model(cfg)
        model.load_state_dict(load_latest(best)[0])
        model.to(device)
        precision = resolve_precision(cfg.precision, device, log=False)
        cache = TokenCache(tokenizer, cfg.max_length, cfg.pad_multiple)
        sets: dict[tuple[str, str], TokenizedTask] = {
            key: cache.get(split, cfg.encoding, cfg.symmetric_eval)
            for key, split in wanted.items()}
        if cfg.pair_feature != "none":
            features = CosineFeatures(cfg.model, device, precision.bf16, cfg.max_length)
            for (t, _), ds in sets.items():
                if t != "sst":
                    features.attach(ds)
            features.close()
        return {key: model_outputs(model, ds, batch_size, device, precision,
                                   cfg.symmetric_eval, progress)
                for key, ds in sets.items()}


def ensemble_predictions(members: Sequence[Member], splits: dict[str, dict[str, TaskSplit]],
                         device: torch.device, batch_size: int = 64, progress: bool = False
                         ) -> dict[tuple[str, str], Predictions]:
    """Predictions of the averaged members per ``(task, split)``; a task is predicted from the
    members trained on it.

    Raises:
        ValueError: no members, or a split no member was trained on.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member run")
    collected: dict[tuple[str, str], list[torch.Tensor]] = {}
    for member in members:
        logger.info("ensemble member %s", member.out)
        for key, out in member.outputs(splits, device, batch_size, progress).items():
            collected.setdefault(key, []).append(out)
    result: dict[tuple[str, str], Predictions] = {}
    for (task, split), outs in collected.items():
        pred, conf = predict(task, combine_outputs(task, outs))
        ds_split = splits[split][task]
        result[(task, split)] = Predictions(
            task, list(ds_split.ids), pred.tolist(), conf.tolist(),
            None if ds_split.labels is None else [float(y) for y in ds_split.labels])
    missing = [f"{t} {s}" for s in splits for t in splits[s] if (t, s) not in result]
    if missing:
        raise ValueError(f"no member was trained on {', '.join(missing)}")
    return result


def member_configs(cfg: RunConfig) -> list[RunConfig]:
    """The members of a recipe with member groups, ``OUT/member-0``, ``OUT/member-1``, ...

    >>> from multitask_bert.presets import RECIPES
    >>> [(m.tasks, m.seed) for m in member_configs(RECIPES["best"])][1:3]
    [(('qqp', 'sts'), 1), (('sst',), 0)]
    """
    out = Path(cfg.out)
    configs = []
    for group in cfg.ensemble:
        for k in range(group.members):
            configs.append(cfg.member(group, k, out / f"member-{len(configs)}"))
    return configs


def train_members(configs: Sequence[RunConfig], resume: bool = False) -> list[Path]:
    """Train every member (with ``resume``, keep the finished ones and continue the others
    from their last checkpoint); their directories."""
    from .pipeline import run

    outs = []
    for index, cfg in enumerate(configs):
        out = Path(cfg.out)
        outs.append(out)
        if resume and (out / "metrics.json").is_file():
            logger.info("member %d: finished earlier, kept (%s)", index, out)
            continue
        logger.info("member %d of %d: tasks %s, seed %d", index + 1, len(configs),
                    ",".join(cfg.tasks), cfg.seed)
        run(dataclasses.replace(cfg, resume=resume and (out / "checkpoints").is_dir()))
    return outs


def combine(dirs: Sequence[str | Path], out: str | Path, *, data_dir: str | None = None,
            device: str = "cpu", plots: bool = True, errors_top_k: int = 10,
            progress: bool = False, config: dict[str, Any] | None = None,
            max_eval_per_task: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Combine finished runs into ``out`` (what a single run writes); its metrics.

    The data are the first member's (its ``--data-source``; ``data_dir`` overrides its
    directory). ``train_seconds`` is the sum of the members':
    running them over the dev and test sets is prediction work, as a run's evaluation is.
    ``max_eval_per_task`` (debug) predicts a seeded subset of each split, as a run does.
    """
    members = [Member.read(d) for d in dirs]
    first = members[0].config
    tasks = [t for t in ("sst", "qqp", "sts") if any(t in m.config.tasks for m in members)]
    splits, missing = load_task_splits(first.data_source, data_dir or first.data_dir,
                                       tasks=tasks, splits=("dev", "test"),
                                       hub_root=first.hub_root)
    splits = {s: {t: subsample(sp, max_eval_per_task, seed) for t, sp in d.items()}
              for s, d in splits.items()}
    preds = ensemble_predictions(members, splits, resolve_device(device), progress=progress)
    out = Path(out)
    for (t, s), p in preds.items():
        write_predictions(out / "predictions" / f"{t}-{s}.csv", p)
    dev = {t: preds[(t, "dev")] for t in tasks}
    seconds = sum(m.metrics["train_seconds"] for m in members)
    metrics: dict[str, Any] = {
        "ensemble": True, "best_dev": dev_scores(dev),
        "members": [{"out": str(m.out), "seed": m.config.seed, "tasks": list(m.config.tasks),
                     "best_dev": m.metrics["best_dev"],
                     "train_minutes": m.metrics.get("train_minutes"),
                     "precision": m.metrics.get("precision")} for m in members],
        "train_seconds": round(seconds, 2), "train_minutes": round(seconds / 60, 2),
        "qqp_dev_rates": (qqp_rates(dev["qqp"].gold, dev["qqp"].pred) if "qqp" in dev
                          else None),
        "missing_files": missing,
        "plots": [str(p.relative_to(out)) for p in write_plots(out / "plots", dev)] if plots
        else [],
        "config": config or {},
    }
    atomic_write_text(out / "errors.md", errors_markdown(dev, splits["dev"], errors_top_k))
    write_metrics(out / "metrics.json", metrics)
    logger.info("ensemble of %d: dev %s, %.1f training minutes; wrote %s", len(members),
                {k: round(v, 4) for k, v in metrics["best_dev"].items()}, seconds / 60, out)
    return metrics


def run_ensemble(cfg: RunConfig) -> dict[str, Any]:
    """Train a recipe's member groups into ``OUT/member-K`` and combine them into ``OUT``."""
    dirs = train_members(member_configs(cfg), cfg.resume)
    return combine(dirs, cfg.out, data_dir=cfg.data_dir, device=cfg.device, plots=cfg.plots,
                   errors_top_k=cfg.errors_top_k, progress=cfg.progress, config=cfg.to_dict(),
                   max_eval_per_task=cfg.max_eval_per_task, seed=cfg.seed)
