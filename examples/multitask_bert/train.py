"""The training loop: steps drawn by ``mtlkit.MultiTaskLoader``, dev evaluation every epoch,
the best checkpoint by the overall dev score, and ``--resume`` from the last checkpoint.

One step takes the loader's batches (interleaved: one of every task; the other modes: one of
one task), computes the task losses (plus the optional SMART terms, ``mtlkit.SmartLoss``),
backpropagates their sum or combines the task gradients (``mtlkit.PCGrad`` /
``mtlkit.MultiTaskOptimizer``), optionally clips the gradient norm, and steps AdamW (betas
(0.9, 0.99), weight decay 0, as in the paper; optionally with per-layer learning rates). With
``--ema`` a weight average follows every step and is what is evaluated, selected and saved as
``best``; with ``--select per-task`` (one encoder per task) each task's expert is kept from its
own best epoch (:mod:`multitask_bert.selection`).

Under torchrun (see :mod:`multitask_bert.distributed`) every rank runs the same schedule on its
shard of each batch; the gradients are averaged across ranks before clipping (by the gradient
combiner itself when there is one); only rank 0 writes checkpoints. ``checkpoint_every`` also
saves the last checkpoint every N steps, so a killed run resumes close to where it died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import as_task_batches, multitask_loader
from .config import RunConfig
from .data import TokenizedTask
from .distributed import DistEnv, any_rank, average_gradients, pop_loss_scale
from .layer_decay import layerwise_param_groups
from .model import MultiTaskBert, task_loss
from .optim import adamw
from .precision import Precision
from .primitives import SmartTerms, gradient_combiner
from .run_state import RunState, load_last, save_last
from .selection import EpochSelection, check_per_task
from .weight_average import weight_average

logger = logging.getLogger(__name__)

EvalFn = Callable[[MultiTaskBert], dict[str, float]]


class Trainer:
    """Runs the loop described in the module docstring for one :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, model: MultiTaskBert,
                 train_sets: dict[str, TokenizedTask], eval_fn: EvalFn, device: torch.device,
                 ckpt_dir: Path, precision: Precision, env: DistEnv | None = None) -> None:
        self.cfg, self.model, self.eval_fn = cfg, model, eval_fn
        self.device, self.ckpt_dir, self.precision = device, ckpt_dir, precision
        self.env = env or DistEnv(device=device)
        self.tasks = list(train_sets)
        self.state = RunState()
        if cfg.select == "per-task":
            check_per_task(model)
        self.selection = EpochSelection(cfg.select, self.tasks)
        self.params = [p for p in model.parameters() if p.requires_grad]
        groups: Any = (self.params if cfg.layer_lr_decay == 1.0 else
                       layerwise_param_groups(model, cfg.lr, cfg.layer_lr_decay))
        self.loader = multitask_loader(
            train_sets, {t: cfg.batch_size_for(t) for t in self.tasks}, cfg.schedule, cfg.seed,
            self.env, cfg.steps_per_epoch, cfg.pair_swap, batch_order=cfg.batch_order)
        self.base_opt = adamw(groups, cfg.lr)
        self.combining = cfg.weighting is not None
        self.opt: Any = (gradient_combiner(self.base_opt, model, cfg.weighting, cfg.seed,
                                           len(self.tasks), len(self.loader))
                         if self.combining else self.base_opt)
        # a combiner (sync="tasks") all-reduces the task gradients itself: averaging them
        # again here would be a second, wrong reduction
        self.reduce_grads = not (self.combining and self.env.distributed)
        self.smart = SmartTerms(cfg.smart_weight, cfg.smart_mode) if cfg.smart_weight else None
        self.ema = weight_average(model, cfg.ema) if cfg.ema > 0 else None
        total = max(1, cfg.epochs * len(self.loader))
        decay = (lambda s: 1.0) if cfg.lr_schedule == "constant" else (
            lambda s: max(0.0, 1.0 - s / total))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.base_opt, decay)

    # ------------------------------------------------------------------ one step
    def _task_losses(self, batches: dict[str, dict[str, torch.Tensor]]
                     ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for task, batch in batches.items():
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "index"}
            scale = pop_loss_scale(batch, self.env)  # rows here * world / rows in all ranks
            labels = batch.pop("labels")
            with self.precision.autocast():
                if self.smart is not None:
                    out, term = self.smart.output_and_term(self.model, task, batch)
                else:
                    out, term = self.model(task, batch), None
            loss = task_loss(task, out, labels)
            if term is not None:
                self._count("smart_term", float(term.detach()))
                loss = loss + term.float()
            losses[task] = loss * scale
        return losses

    def step(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step on the loader's ``{task: batch}``; the task losses."""
        losses = self._task_losses(batches)
        self.opt.zero_grad(set_to_none=True)
        if self.combining:
            stats = self.opt.backward(losses)
            self._count("combined_steps", 1.0)
            if stats.num_conflicts is not None:  # None: a loss weighting forms no J
                self._count("gradient_conflicts", float(stats.num_conflicts))
            for task, w in zip(stats.tasks, stats.weights.tolist(), strict=True):
                self._count(f"weight_{task}", w)  # the epoch's mean: / combined_steps
        else:
            torch.stack(list(losses.values())).sum().backward()
        if self.reduce_grads:
            average_gradients(self.params, self.env)  # no-op in one process
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {t: float(v.detach()) for t, v in losses.items()}

    def _count(self, key: str, value: float) -> None:
        stats = self.state.primitive_stats
        stats[key] = stats.get(key, 0.0) + value

    # ------------------------------------------------------------------ loop
    def out_of_budget(self) -> bool:
        c, s = self.cfg, self.state
        timed = c.max_train_seconds is not None and s.train_seconds >= c.max_train_seconds
        if c.max_train_seconds is not None:  # the ranks' clocks differ: stop together
            timed = any_rank(timed, self.env)
        return timed or (c.max_steps is not None and s.global_step >= c.max_steps)

    def run(self) -> RunState:
        """Train until ``epochs`` are done or the budget runs out; the final state."""
        s, c = self.state, self.cfg
        while s.epoch < c.epochs and not self.out_of_budget():
            self.model.train()  # from_pretrained hands the encoder back in eval mode
            if s.step_in_epoch == 0:
                s.loss_ema, s.primitive_stats = None, {}
            stopped = self._train_epoch(iter(self.loader), len(self.loader))
            if stopped and s.step_in_epoch == 0:
                break
            self.end_epoch(partial=stopped)
            if stopped:
                break
        return s

    def _train_epoch(self, items: Iterator[Any], steps: int) -> bool:
        """Steps until the epoch ends (False) or the budget runs out mid-epoch (True)."""
        s, c = self.state, self.cfg
        bar = tqdm(total=steps, initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}/{c.epochs}",
                   disable=not c.progress or not self.env.is_main, dynamic_ncols=True,
                   leave=False)
        try:
            while s.step_in_epoch < steps:
                # the budget is checked before the next batch is drawn, so a checkpoint
                # written after stopping resumes with exactly that batch
                if self.out_of_budget():
                    return True
                batches = as_task_batches(next(items))
                t0 = time.perf_counter()
                losses = self.step(batches)
                dt = time.perf_counter() - t0
                s.train_seconds += dt
                s.global_step += 1
                s.step_in_epoch += 1
                self._report(bar, losses, sum(len(b["index"]) for b in batches.values()) / dt)
                if (c.checkpoint_every and s.global_step % c.checkpoint_every == 0
                        and s.step_in_epoch != steps):  # end_epoch saves that one
                    save_last(self)
            next(items, None)  # let the loader finish its epoch (it draws nothing more)
            return False
        finally:
            bar.close()

    def _report(self, bar: Any, losses: dict[str, float], rate: float) -> None:
        s = self.state
        total = sum(losses.values())
        s.loss_ema = ema = total if s.loss_ema is None else 0.95 * s.loss_ema + 0.05 * total
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", ex_s=f"{rate:.1f}")
        if self.cfg.log_every and s.global_step % self.cfg.log_every == 0:
            logger.info("step %d (epoch %d) loss %.4f %s %.1f ex/s", s.global_step, s.epoch + 1,
                        ema, {k: round(v, 4) for k, v in losses.items()}, rate)

    def end_epoch(self, partial: bool) -> None:
        """Evaluate (the weight average, and the raw weights beside it), keep the best, save."""
        s = self.state
        t0 = time.perf_counter()
        raw_scores = None
        evaluated = self.model
        if self.ema is not None:
            raw_scores = self.eval_fn(self.model)
            evaluated = self.ema.module
        scores = self.eval_fn(evaluated)
        entry = {"epoch": s.epoch + 1, "partial": partial, "global_step": s.global_step,
                 "train_seconds": round(s.train_seconds, 2), "train_loss": s.loss_ema,
                 "dev": scores, "eval_seconds": round(time.perf_counter() - t0, 2),
                 "primitives": dict(s.primitive_stats)}
        if raw_scores is not None:
            entry["dev_without_ema"] = raw_scores
        s.history.append(entry)
        logger.info("epoch %d%s dev %s", s.epoch + 1, " (partial)" if partial else "",
                    {k: round(v, 4) for k, v in scores.items()})
        self.selection.update(s, scores, evaluated, self.ckpt_dir / "best", self.env.is_main)
        if not partial:
            s.epoch, s.step_in_epoch = s.epoch + 1, 0
        save_last(self)

    # ------------------------------------------------------------------ resume
    def load_last(self) -> bool:
        """Restore everything from the last checkpoint (see :func:`run_state.load_last`)."""
        if not load_last(self):
            return False
        self.selection.restore(self.state, self.ckpt_dir / "best")
        return True
