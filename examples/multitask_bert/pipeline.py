"""One run of the pipeline from a :class:`~multitask_bert.config.RunConfig`: data, model,
(contrastive stage), training, final predictions with the best checkpoint, and the reports.
A recipe with member groups (``--preset best``) trains and combines an ensemble instead
(:func:`multitask_bert.ensemble.run_ensemble`).

Under torchrun every rank runs this function; the process group is set up first and torn
down at the end (also on error); only rank 0 writes files (checkpoints, metrics.json,
predictions, plots, errors.md); evaluation is sharded over the ranks and all-gathered.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .contrastive import contrastive_stage
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
    parameters_agree,
    setup,
    teardown,
)
from .evaluate import dev_scores, predict_split
from .final import finish
from .model import MultiTaskBert, load_backbone
from .pair_features import CosineFeatures, fit_feature_heads
from .precision import Precision, resolve_precision
from .primitives import lora_mixture
from .train import Trainer

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_splits(cfg: RunConfig) -> tuple[dict[str, dict[str, TaskSplit]], list[str]]:
    """``{split: {task: TaskSplit}}`` for train/dev/test; missing test files are listed."""
    out: dict[str, dict[str, TaskSplit]] = {"train": {}, "dev": {}, "test": {}}
    missing: list[str] = []
    for task in cfg.tasks:
        for split in ("train", "dev"):
            out[split][task] = read_split(cfg.data_dir, task, split)
        test = read_test_split(cfg.data_dir, task, missing)
        if test is not None:
            out["test"][task] = test
        out["train"][task] = subsample(out["train"][task], cfg.max_train_per_task, cfg.seed)
        out["dev"][task] = subsample(out["dev"][task], cfg.max_eval_per_task, cfg.seed)
        if task in out["test"]:
            out["test"][task] = subsample(out["test"][task], cfg.max_eval_per_task, cfg.seed)
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


def build_model(cfg: RunConfig, report: dict[str, Any] | None = None
                ) -> tuple[MultiTaskBert, Any]:
    """The model for ``cfg.mixture`` (none / full / lora) and the tokenizer; ``report`` gets
    the loading report of each encoder loaded (see :func:`~multitask_bert.model.load_backbone`).
    """
    reports: list[dict[str, list[str]]] = []

    def load() -> tuple[torch.nn.Module, Any]:
        reports.append({})
        return load_backbone(cfg.model, cfg.encoder_dropout, reports[-1])

    encoder, tokenizer = load()
    hidden = encoder.config.hidden_size
    kw = {"encoding": cfg.encoding, "dropout": cfg.dropout, "pooling": cfg.pooling,
          "pair_feature": cfg.pair_feature != "none"}
    if cfg.mixture == "full":
        encoders = {cfg.tasks[0]: encoder}
        for task in cfg.tasks[1:]:
            encoders[task] = load()[0]
        model = MultiTaskBert(None, hidden, task_encoders=encoders, **kw)
    elif cfg.mixture == "lora":
        moe = lora_mixture(encoder, cfg.tasks, cfg.lora_r, cfg.lora_alpha)
        model = MultiTaskBert(moe, hidden, routed=True, **kw)
    else:
        model = MultiTaskBert(encoder, hidden, **kw)
    if report is not None:
        report["encoders"] = reports
    return model, tokenizer


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


def run(cfg: RunConfig) -> dict[str, Any]:
    """Train and report; returns what is written to ``OUT/metrics.json`` (on every rank).

    A recipe with member groups trains and combines its ensemble. Under torchrun
    (``WORLD_SIZE`` > 1) the process group is initialised here and destroyed when the run ends
    or fails.

    Raises:
        ValueError: no data directory.
    """
    if not cfg.data_dir:
        raise ValueError("--data-dir: expected the directory of the CS224N CSV files (or "
                         "$MTLKIT_DATA_DIR), got none")
    if cfg.ensemble:
        from .ensemble import run_ensemble

        return run_ensemble(cfg)
    device = resolve_device(cfg.device)
    set_determinism(cfg.deterministic, device)
    env = setup(device)
    try:
        return _run(cfg, env)
    finally:
        teardown()


class _Data:
    """The splits of a run, tokenized (training sets with both pair orders for ``--pair-swap``,
    dev sets for ``--symmetric-eval``)."""

    def __init__(self, cfg: RunConfig, tokenizer: Any) -> None:
        for task in cfg.tasks:  # fail fast on a missing file
            for split in ("train", "dev"):
                resolve_path(cfg.data_dir, task, split)
        self.splits, self.missing = load_splits(cfg)
        self.cache = TokenCache(tokenizer, cfg.max_length, cfg.pad_multiple)
        self.mode, self.symmetric = cfg.encoding, cfg.symmetric_eval
        t0 = time.perf_counter()
        self.train = {t: self.cache.get(self.splits["train"][t], self.mode, cfg.pair_swap)
                      for t in cfg.tasks}
        self.dev = {t: self.get("dev", t) for t in cfg.tasks}
        logger.info("tokenized %s in %.1f s", {t: len(ds) for t, ds in self.train.items()},
                    time.perf_counter() - t0)

    def get(self, split: str, task: str) -> TokenizedTask:
        """The tokenized evaluation split (both orders with ``--symmetric-eval``)."""
        return self.cache.get(self.splits[split][task], self.mode, self.symmetric)


def _run(cfg: RunConfig, env: DistEnv) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, out = env.device, Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(cfg.precision, device)
    loading: dict[str, Any] = {}
    model, tokenizer = build_model(cfg, loading)
    data = _Data(cfg, tokenizer)
    model.to(device)
    broadcast_module(model, env)  # every rank starts from rank 0's initial weights
    if env.rank > 0:  # each rank its own dropout / SMART noise stream
        torch.manual_seed(cfg.seed + 7919 * env.rank)
    feature_seconds = attach_pair_features(cfg, model, data, device, precision)
    eval_bs = cfg.eval_batch_size or 4 * cfg.batch_size

    def eval_fn(m: MultiTaskBert) -> dict[str, float]:
        return dev_scores({t: predict_split(m, ds, eval_bs, device, precision, env,
                                            cfg.symmetric_eval, cfg.progress)
                           for t, ds in data.dev.items()})

    trainer = Trainer(cfg, model, data.train, eval_fn, device, out / "checkpoints", precision,
                      env)
    if cfg.resume and not trainer.load_last():
        logger.warning("--resume: no checkpoint under %s; starting fresh", out / "checkpoints")
    extra = trainer.state.extra
    if feature_seconds is not None and "pair_feature_seconds" not in extra:
        # the training sets' features are training compute (a resumed run counted them)
        extra["pair_feature_seconds"] = round(feature_seconds, 2)
        trainer.state.train_seconds += feature_seconds
    if cfg.contrastive and not extra.get("contrastive_done"):
        t0 = time.perf_counter()
        extra["contrastive_loss"] = contrastive_stage(model, data.splits["train"], data.cache,
                                                      cfg, device, precision.autocast, env)
        extra["contrastive_done"] = True
        extra["contrastive_seconds"] = round(time.perf_counter() - t0, 2)
        trainer.state.train_seconds += time.perf_counter() - t0
    state = trainer.run()
    if not parameters_agree(model, env):
        raise RuntimeError("the ranks' parameters differ after training (a gradient was not "
                           "reduced across ranks)")
    return finish(cfg, model, data, state, env, precision, eval_bs, start,
                  {"model_loading": loading, "precision": {"used": precision.name,
                                                           "reason": precision.reason}})


def attach_pair_features(cfg: RunConfig, model: MultiTaskBert, data: _Data,
                         device: torch.device, precision: Precision) -> float | None:
    """``--pair-feature cosine``: attach the frozen encoder's cosines to every pair split and
    start the pair heads from their fit on the training sets.

    Returns the seconds spent on the training sets (training compute), or None when off. The
    dev and test sets' cosines are prediction work, like evaluation, and are not counted.
    """
    if cfg.pair_feature == "none":
        return None
    pair_tasks = [t for t in cfg.tasks if t in PAIR_TASKS]
    t0 = time.perf_counter()
    features = CosineFeatures(cfg.model, device, precision.bf16, cfg.max_length)
    for t in pair_tasks:
        features.attach(data.train[t])
    fit_feature_heads(model, {t: data.train[t] for t in pair_tasks})
    seconds = time.perf_counter() - t0
    for t in pair_tasks:
        features.attach(data.dev[t])
        if t in data.splits["test"]:
            features.attach(data.get("test", t))
    features.close()
    logger.info("pair cosine features in %.1f s (%.1f s of them on the training sets)",
                time.perf_counter() - t0, seconds)
    return seconds
