"""The end of a run: predictions of the best checkpoint, plots, errors.md and metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .checkpoint import load_latest
from .config import RunConfig
from .distributed import DistEnv, broadcast_module, broadcast_object
from .evaluate import Predictions, dev_scores, predict_split
from .model import MultiTaskBert
from .precision import Precision
from .report import errors_markdown, qqp_rates, write_metrics, write_plots, write_predictions
from .run_state import RunState
from .saved_outputs import save_outputs, weights_digest

logger = logging.getLogger(__name__)


def load_best(model: MultiTaskBert, out: Path, env: DistEnv) -> str | None:
    """Load ``out``'s best checkpoint into ``model`` on every rank; the digest of its weights
    (:func:`~multitask_bert.saved_outputs.weights_digest`, on the main process), or None when
    there is no best checkpoint."""
    best = out / "checkpoints" / "best"
    if not broadcast_object(best.exists() or best.with_name("best.previous").exists(), env):
        return None
    digest = ""
    if env.is_main:
        state, _, where = load_latest(best)
        model.load_state_dict(state)
        digest = weights_digest(where)
    broadcast_module(model, env)
    return digest


def finish(cfg: RunConfig, model: MultiTaskBert, data: Any, state: RunState, env: DistEnv,
           precision: Precision, eval_bs: int, start: float,
           extra: dict[str, Any]) -> dict[str, Any]:
    """Predict dev and test with the best checkpoint, write the reports and the raw outputs
    (:mod:`~multitask_bert.saved_outputs`, for ensembles) on rank 0, and return the metrics
    (on every rank)."""
    out = Path(cfg.out)
    weights = load_best(model, out, env)
    if weights is None:
        logger.warning("no best checkpoint (no epoch finished); predicting with the last weights")
    main = env.is_main
    predictions: dict[tuple[str, str], Predictions] = {}

    def predict(split: str, task: str) -> Predictions:
        return predict_split(model, data.get(split, task), eval_bs, env.device, precision, env,
                             cfg.symmetric_eval, cfg.progress)

    for t in cfg.tasks:
        predictions[(t, "dev")] = predict("dev", t)
        if main:
            write_predictions(out / "predictions" / f"{t}-dev.csv", predictions[(t, "dev")])
        if t in data.splits["test"]:
            predictions[(t, "test")] = test_preds = predict("test", t)
            if main:
                write_predictions(out / "predictions" / f"{t}-test.csv", test_preds)
    if main and weights is not None:
        save_outputs(out, {k: p.outputs for k, p in predictions.items() if p.outputs is not None},
                     {(t, s): data.splits[s][t] for t, s in predictions}, weights)
    dev_preds = {t: predictions[(t, "dev")] for t in cfg.tasks}
    final_dev = dev_scores(dev_preds)
    plots = [] if not cfg.plots or not main else [str(p.relative_to(out)) for p in
                                                 write_plots(out / "plots", dev_preds)]
    if main:
        (out / "errors.md").write_text(errors_markdown(dev_preds, data.splits["dev"],
                                                       cfg.errors_top_k))
    metrics: dict[str, Any] = {
        "preset": cfg.preset, "model": cfg.model, "device": str(env.device),
        "world_size": env.world,
        "best_dev": state.best_dev or final_dev, "best_epoch": state.best_epoch,
        "best_epochs": state.best_epochs,
        "final_dev_with_best_checkpoint": final_dev,
        "history": state.history, "train_seconds": round(state.train_seconds, 2),
        "train_minutes": round(state.train_seconds / 60, 2), "global_steps": state.global_step,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "qqp_dev_rates": (qqp_rates(dev_preds["qqp"].gold, dev_preds["qqp"].pred)
                          if "qqp" in dev_preds and dev_preds["qqp"].gold else None),
        "data": {f"{t}-{s}": {"rows": len(sp), "skipped": sp.skipped, "file": str(sp.path)}
                 for s, d in data.splits.items() for t, sp in d.items()},
        "missing_files": data.missing, "plots": plots, "extra": state.extra,
        **extra, "config": cfg.to_dict(),
    }
    if main:
        write_metrics(out / "metrics.json", metrics)
    logger.info("best dev %s (epoch %d), %.1f training minutes; wrote %s",
                {k: round(v, 4) for k, v in metrics["best_dev"].items()}, state.best_epoch,
                state.train_seconds / 60, out)
    return metrics
