"""One run of the pipeline from parsed flags: data, model, (contrastive stage), training,
final predictions with the best checkpoint, and the reports.

Under torchrun every rank runs this function; the process group is set up first and torn
down at the end (also on error); only rank 0 writes files (checkpoints, metrics.json,
predictions, plots, errors.md); evaluation is sharded over the ranks and all-gathered.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_latest
from .data import (
    FILES,
    PAIR_TASKS,
    TaskSplit,
    TokenCache,
    TokenizedTask,
    read_split,
    resolve_path,
    subsample,
)
from .distributed import (
    DistEnv,
    broadcast_module,
    broadcast_object,
    parameters_agree,
    setup,
    teardown,
)
from .evaluate import Predictions, dev_scores, predict_split
from .model import MultiTaskBert, load_backbone
from .pair_features import CosineFeatures, fit_feature_heads
from .primitives import build_lora_moe, contrastive_stage
from .report import errors_markdown, qqp_rates, write_metrics, write_plots, write_predictions
from .train import RunState, TrainConfig, Trainer, autocast_factory

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_splits(args: argparse.Namespace) -> tuple[dict[str, dict[str, TaskSplit]], list[str]]:
    """``{split: {task: TaskSplit}}`` for train/dev/test; missing test files are listed."""
    out: dict[str, dict[str, TaskSplit]] = {"train": {}, "dev": {}, "test": {}}
    missing: list[str] = []
    for task in args.tasks:
        for split in ("train", "dev"):
            out[split][task] = read_split(args.data_dir, task, split)
        test = read_test_split(args.data_dir, task, missing)
        if test is not None:
            out["test"][task] = test
        out["train"][task] = subsample(out["train"][task], args.max_train_per_task, args.seed)
        out["dev"][task] = subsample(out["dev"][task], args.max_eval_per_task, args.seed)
        if task in out["test"]:
            out["test"][task] = subsample(out["test"][task], args.max_eval_per_task, args.seed)
    return out, missing


def read_test_split(data_dir: str | Path, task: str, missing: list[str]) -> TaskSplit | None:
    """``task``'s test split, or None with a warning and its expected paths added to
    ``missing`` (the data set lacks some test files, e.g. Quora's).

    >>> import tempfile
    >>> missing = []
    >>> read_test_split(tempfile.mkdtemp(), "sts", missing), Path(missing[0]).name
    (None, 'sts-test-student.csv')
    """
    try:
        return read_split(data_dir, task, "test")
    except FileNotFoundError as exc:
        logger.warning("%s; no %s test predictions will be written", exc, task)
        missing.extend(str(Path(data_dir) / n) for n in FILES[(task, "test")])
        return None


def build_model(args: argparse.Namespace) -> tuple[MultiTaskBert, Any]:
    """The model for ``args.mixture`` (none / full / lora) and the tokenizer."""
    encoder, tokenizer = load_backbone(args.model, args.encoder_dropout)
    hidden = encoder.config.hidden_size
    kw = {"encoding": args.encoding, "dropout": args.dropout, "pooling": args.pooling,
          "pair_feature": getattr(args, "pair_feature", "none") != "none"}
    if args.mixture == "full":
        encoders = {args.tasks[0]: encoder}
        for task in args.tasks[1:]:
            encoders[task] = load_backbone(args.model, args.encoder_dropout)[0]
        return MultiTaskBert(None, hidden, task_encoders=encoders, **kw), tokenizer
    if args.mixture == "lora":
        moe = build_lora_moe(encoder, args.tasks, args.lora_r, args.lora_alpha)
        return MultiTaskBert(moe, hidden, routed=True, **kw), tokenizer
    return MultiTaskBert(encoder, hidden, **kw), tokenizer


def set_determinism(enabled: bool, device: torch.device) -> None:
    """``--deterministic``: deterministic kernels (error where none exists); on CUDA also
    cuBLAS's fixed workspace and no cuDNN autotuning. On CPU a run with a fixed
    ``--threads`` is already reproducible bit for bit; this makes it explicit."""
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and report; returns what is written to ``OUT/metrics.json`` (on every rank).

    Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised here and destroyed
    when the run ends or fails.
    """
    device = resolve_device(args.device)
    set_determinism(getattr(args, "deterministic", False), device)
    env = setup(device)
    try:
        return _run(args, env)
    finally:
        teardown()


def _run(args: argparse.Namespace, env: DistEnv) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = env.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:  # fail fast, before loading a model
        for split in ("train", "dev"):
            resolve_path(args.data_dir, task, split)
    splits, missing = load_splits(args)
    model, tokenizer = build_model(args)
    model.to(device)
    broadcast_module(model, env)  # every rank starts from rank 0's initial weights
    if env.rank > 0:  # each rank its own dropout / SMART noise stream
        torch.manual_seed(args.seed + 7919 * env.rank)
    cache = TokenCache(tokenizer, args.max_length, args.pad_multiple)
    t0 = time.perf_counter()
    swap, sym = getattr(args, "pair_swap", False), getattr(args, "symmetric_eval", False)
    train_sets = {t: cache.get(splits["train"][t], token_mode(args), swap) for t in args.tasks}
    dev_sets = {t: cache.get(splits["dev"][t], token_mode(args), sym) for t in args.tasks}
    logger.info("tokenized %s in %.1f s", {t: len(ds) for t, ds in train_sets.items()},
                time.perf_counter() - t0)
    feature_seconds = attach_pair_features(args, model, splits, cache, train_sets, dev_sets,
                                           device)
    eval_bs = args.eval_batch_size or 4 * args.batch_size

    def eval_fn(m: MultiTaskBert) -> dict[str, float]:
        return dev_scores({t: predict_split(m, ds, eval_bs, device, args.bf16, env, sym)
                           for t, ds in dev_sets.items()})

    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        task_batch_sizes=dict(getattr(args, "task_batch_sizes", None) or {}),
        steps_per_epoch=args.steps_per_epoch, lr_schedule=args.lr_schedule,
        clip_norm=args.clip_norm, surgery=args.surgery, smart_weight=args.smart_weight,
        smart_mode=args.smart_mode,
        loader=args.loader, bf16=args.bf16, seed=args.seed,
        max_train_seconds=None if args.max_train_minutes is None else 60 * args.max_train_minutes,
        max_steps=args.max_steps, log_every=args.log_every, progress=not args.no_progress,
        checkpoint_every=getattr(args, "checkpoint_every", 0),
        ema=getattr(args, "ema", 0.0) or 0.0, pair_swap=swap,
        select=getattr(args, "select", "overall"),
        layer_lr_decay=getattr(args, "layer_lr_decay", 1.0))
    trainer = Trainer(cfg, model, train_sets, eval_fn, device, out / "checkpoints", RunState(),
                      env)
    if args.resume and not trainer.load_last():
        logger.warning("--resume: no checkpoint under %s; starting fresh", out / "checkpoints")
    if feature_seconds is not None and "pair_feature_seconds" not in trainer.state.extra:
        # the training sets' features are training compute (a resumed run counted them)
        trainer.state.extra["pair_feature_seconds"] = round(feature_seconds, 2)
        trainer.state.train_seconds += feature_seconds
    if args.contrastive and not trainer.state.extra.get("contrastive_done"):
        t0 = time.perf_counter()
        trainer.state.extra["contrastive_loss"] = contrastive_stage(
            model, splits["train"], cache, unsup_steps=args.contrastive_unsup_steps,
            sup_steps=args.contrastive_sup_steps, batch_size=args.contrastive_batch_size,
            lr=args.contrastive_lr or args.lr, temperature=args.contrastive_temperature,
            device=device, seed=args.seed, clip_norm=args.clip_norm,
            autocast=autocast_factory(device, args.bf16), env=env)
        trainer.state.extra["contrastive_done"] = True
        trainer.state.extra["contrastive_seconds"] = round(time.perf_counter() - t0, 2)
        trainer.state.train_seconds += time.perf_counter() - t0
    state = trainer.run()
    if not parameters_agree(model, env):
        raise RuntimeError("the ranks' parameters differ after training (a gradient was not "
                           "reduced across ranks)")

    best = out / "checkpoints" / "best"
    if broadcast_object(best.exists() or best.with_name("best.previous").exists(), env):
        if env.is_main:
            model.load_state_dict(load_latest(best)[0])
        broadcast_module(model, env)
    else:
        logger.warning("no best checkpoint (no epoch finished); predicting with the last weights")
    dev_preds: dict[str, Predictions] = {}
    main = env.is_main
    for t in args.tasks:
        dev_preds[t] = predict_split(model, dev_sets[t], eval_bs, device, args.bf16, env, sym)
        if main:
            write_predictions(out / "predictions" / f"{t}-dev.csv", dev_preds[t])
        if t in splits["test"]:
            ds = cache.get(splits["test"][t], token_mode(args), sym)
            test_preds = predict_split(model, ds, eval_bs, device, args.bf16, env, sym)
            if main:
                write_predictions(out / "predictions" / f"{t}-test.csv", test_preds)
    final_dev = dev_scores(dev_preds)
    plots = [] if args.no_plots or not main else [str(p.relative_to(out)) for p in
                                                  write_plots(out / "plots", dev_preds)]
    if main:
        (out / "errors.md").write_text(errors_markdown(dev_preds, splits["dev"],
                                                       args.errors_top_k))
    metrics: dict[str, Any] = {
        "preset": args.preset, "model": args.model, "device": str(device),
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
                 for s, d in splits.items() for t, sp in d.items()},
        "missing_files": missing, "plots": plots, "extra": state.extra,
        "config": {k: v for k, v in vars(args).items() if k != "func"},
    }
    if main:
        write_metrics(out / "metrics.json", metrics)
    logger.info("best dev %s (epoch %d), %.1f training minutes; wrote %s",
                {k: round(v, 4) for k, v in metrics["best_dev"].items()}, state.best_epoch,
                state.train_seconds / 60, out)
    return metrics


def attach_pair_features(args: argparse.Namespace, model: MultiTaskBert,
                         splits: dict[str, dict[str, TaskSplit]], cache: TokenCache,
                         train_sets: dict[str, TokenizedTask], dev_sets: dict[str, TokenizedTask],
                         device: torch.device) -> float | None:
    """``--pair-feature cosine``: attach the frozen encoder's cosines to every pair split and
    start the pair heads from their fit on the training sets.

    Returns the seconds spent on the training sets (training compute), or None when off. The
    dev and test sets' cosines are prediction work, like evaluation, and are not counted.
    """
    if getattr(args, "pair_feature", "none") == "none":
        return None
    pair_tasks = [t for t in args.tasks if t in PAIR_TASKS]
    t0 = time.perf_counter()
    features = CosineFeatures(args.model, device, args.bf16, args.max_length)
    for t in pair_tasks:
        features.attach(train_sets[t])
    fit_feature_heads(model, {t: train_sets[t] for t in pair_tasks})
    seconds = time.perf_counter() - t0
    for t in pair_tasks:
        features.attach(dev_sets[t])
        if t in splits["test"]:
            features.attach(cache.get(splits["test"][t], token_mode(args),
                                      getattr(args, "symmetric_eval", False)))
    features.close()
    logger.info("pair cosine features in %.1f s (%.1f s of them on the training sets)",
                time.perf_counter() - t0, seconds)
    return seconds


def token_mode(args: argparse.Namespace) -> str:
    """How :class:`~multitask_bert.data.TokenizedTask` tokenizes pairs for ``--encoding``.

    >>> token_mode(argparse.Namespace(encoding="separate"))
    'separate'
    """
    return "cross" if args.encoding == "cross" else "separate"
