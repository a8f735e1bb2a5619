"""The training loop: sequential (baseline) or interleaved steps, dev evaluation every epoch,
best checkpoint by the overall dev score, and ``--resume`` from the last checkpoint.

One step draws one batch of each task in the step's plan (interleaved: every task; sequential:
one task at a time, each dataset in turn, as in the paper's baseline), sums the task losses
(plus the optional SMART terms), backpropagates (plainly or through PCGrad), optionally clips
the gradient norm, and steps AdamW (betas (0.9, 0.99), weight decay 0, as in the paper;
optionally with per-layer learning rates, :mod:`multitask_bert.layer_decay`). With ``--ema``
a :class:`~multitask_bert.weight_average.WeightEMA` follows every step, and the averaged
weights are the ones evaluated, selected and saved as ``best``. With ``--select per-task``
(one encoder per task) each task's expert is kept from its own best epoch
(:mod:`multitask_bert.selection`).

Under torchrun (see :mod:`multitask_bert.distributed`) every rank runs the same plan on its
shard of each batch; the gradients are averaged across ranks before clipping (by PCGrad
itself with ``--surgery``); only rank 0 writes checkpoints. ``checkpoint_every`` also saves
the last checkpoint every N steps, so a killed run resumes close to where it died.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import TaskStream, make_loader
from .checkpoint import load_latest, optimizer_state_from_json, save_checkpoint
from .data import TokenizedTask
from .distributed import (
    DistEnv,
    ShardCollate,
    all_gather_objects,
    any_rank,
    average_gradients,
    pop_loss_scale,
)
from .layer_decay import layerwise_param_groups
from .model import MultiTaskBert, task_loss
from .optim import adamw
from .primitives import (
    SmartTerm,
    distributed_task_loaders,
    iterate_mtlkit,
    mtlkit_loader,
    wrap_surgery,
)
from .rng import capture_rng, restore_rng
from .selection import check_per_task, improved_tasks, merge_best, merge_scores
from .train_config import RunState, TrainConfig
from .weight_average import WeightEMA

logger = logging.getLogger(__name__)

EvalFn = Callable[[MultiTaskBert], dict[str, float]]


def autocast_factory(device: torch.device, bf16: bool) -> Callable[[], Any]:
    """A zero-argument context factory: bf16 autocast on ``device``, or nothing."""
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


class Trainer:
    """Runs :func:`train`'s loop; see the module docstring."""

    def __init__(self, cfg: TrainConfig, model: MultiTaskBert,
                 train_sets: dict[str, TokenizedTask], eval_fn: EvalFn, device: torch.device,
                 ckpt_dir: Path, state: RunState | None = None,
                 env: DistEnv | None = None) -> None:
        self.cfg, self.model, self.train_sets, self.eval_fn = cfg, model, train_sets, eval_fn
        self.device, self.ckpt_dir = device, ckpt_dir
        self.env = env or DistEnv(device=device)
        self.tasks = list(train_sets)
        self.state = state or RunState()
        if cfg.select == "per-task":
            check_per_task(model)
        self._best_state: dict[str, torch.Tensor] | None = None  # per-task: the merged best
        self.autocast = autocast_factory(device, cfg.bf16)
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        groups: Any = (params if cfg.layer_lr_decay == 1.0 else
                       layerwise_param_groups(model, cfg.lr, cfg.layer_lr_decay))
        self.base_opt = adamw(groups, cfg.lr)
        self.opt: Any = (wrap_surgery(self.base_opt, model, cfg.seed) if cfg.surgery
                         else self.base_opt)
        # With --surgery, PCGrad(sync="tasks") all-reduces the per-task gradients itself:
        # averaging them again here would be a second, wrong reduction.
        self.reduce_grads = not (cfg.surgery and self.env.distributed)
        self.smart = SmartTerm(cfg.smart_weight, cfg.smart_mode) if cfg.smart_weight > 0 else None
        shard = self.env.distributed
        self.streams = {t: TaskStream(make_loader(ds, cfg.batch_size_for(t), True, cfg.seed + k,
                                                  ShardCollate(ds.collate, self.env)
                                                  if shard else None, cfg.pair_swap))
                        for k, (t, ds) in enumerate(train_sets.items())}
        self.ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
        self._mtl: Any = None
        self._mtl_state: dict[str, Any] | None = None
        self.plan = self._epoch_plan()
        total = max(1, cfg.epochs * len(self.plan))
        lam = (lambda s: 1.0) if cfg.lr_schedule == "constant" else (
            lambda s: max(0.0, 1.0 - s / total))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.base_opt, lam)

    # ------------------------------------------------------------------ plan and batches
    def _epoch_plan(self) -> list[tuple[str, ...]]:
        if self.cfg.schedule == "sequential":
            return [(t,) for t in self.tasks for _ in range(self.streams[t].batches_per_pass())]
        n = self.cfg.steps_per_epoch or max(s.batches_per_pass() for s in self.streams.values())
        return [tuple(self.tasks)] * n

    def _step_batches(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        if self.cfg.loader == "mtlkit":
            if self.env.distributed:  # a DistributedSampler per task
                loaders = distributed_task_loaders(
                    self.train_sets, {t: self.cfg.batch_size_for(t) for t in self.tasks},
                    self.cfg.seed, self.env)
            else:
                loaders = {t: s.loader for t, s in self.streams.items()}
            mode = "interleaved" if self.cfg.schedule == "interleaved" else "sequential"
            self._mtl = mtlkit_loader(loaders, mode, self.cfg.seed + self.state.epoch)
            if self._mtl_state is not None:  # resume mid-epoch
                self._mtl.load_state_dict(self._mtl_state)
                self._mtl_state = None
            else:  # reaches every inner sampler's set_epoch (DistributedSampler's too)
                self._mtl.set_epoch(self.state.epoch)
            yield from iterate_mtlkit(self._mtl)
            self._mtl = None
            return
        for plan in self.plan[self.state.step_in_epoch:]:
            yield {t: self.streams[t].next() for t in plan}

    # ------------------------------------------------------------------ one step
    def step(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        losses: dict[str, torch.Tensor] = {}
        for task, batch in batches.items():
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "index"}
            scale = pop_loss_scale(batch, self.env)  # rows here * world / rows in all ranks
            labels = batch.pop("labels")
            with self.autocast():
                if self.smart is not None:
                    out, reg = self.smart.task_output_and_loss(self.model, task, batch)
                else:
                    out, reg = self.model(task, batch), None
            loss = task_loss(task, out, labels)
            losses[task] = (loss if reg is None else loss + reg.float()) * scale
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.surgery:
            self.opt.backward(losses)  # PCGrad(sync="tasks") reduces across ranks itself
        else:
            torch.stack(list(losses.values())).sum().backward()
        if self.reduce_grads:
            average_gradients(self.params, self.env)  # no-op in one process
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update()
        return {t: float(v.detach()) for t, v in losses.items()}

    # ------------------------------------------------------------------ loop
    def out_of_budget(self) -> bool:
        c, s = self.cfg, self.state
        timed = c.max_train_seconds is not None and s.train_seconds >= c.max_train_seconds
        if c.max_train_seconds is not None:  # the ranks' clocks differ: stop together
            timed = any_rank(timed, self.env)
        return timed or (c.max_steps is not None and s.global_step >= c.max_steps)

    def run(self) -> RunState:
        s, c = self.state, self.cfg
        while s.epoch < c.epochs and not self.out_of_budget():
            self.model.train()  # from_pretrained hands the encoder back in eval mode
            steps_this_epoch = len(self.plan) if c.loader == "builtin" else None
            bar = tqdm(total=steps_this_epoch, initial=s.step_in_epoch,
                       desc=f"epoch {s.epoch + 1}/{c.epochs}",
                       disable=not c.progress or not self.env.is_main,
                       dynamic_ncols=True, leave=False)
            if s.step_in_epoch == 0:
                s.loss_ema = None
            stopped = False
            batch_iter = self._step_batches()
            while True:
                # the budget is checked before the next batch is drawn, so a checkpoint
                # written after stopping resumes with exactly that batch
                if self.out_of_budget():
                    stopped = not self._epoch_exhausted(steps_this_epoch)
                    break
                batches = next(batch_iter, None)
                if batches is None:
                    break
                t0 = time.perf_counter()
                losses = self.step(batches)
                dt = time.perf_counter() - t0
                s.train_seconds += dt
                s.global_step += 1
                s.step_in_epoch += 1
                total = sum(losses.values())
                ema = s.loss_ema = total if s.loss_ema is None else (0.95 * s.loss_ema
                                                                       + 0.05 * total)
                n_ex = sum(len(b["index"]) for b in batches.values())
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.4f}", ex_s=f"{n_ex / max(dt, 1e-9):.1f}")
                if c.log_every and s.global_step % c.log_every == 0:
                    logger.info("step %d (epoch %d) loss %.4f %s %.1f ex/s", s.global_step,
                                s.epoch + 1, ema, {k: round(v, 4) for k, v in losses.items()},
                                n_ex / max(dt, 1e-9))
                if (c.checkpoint_every and s.global_step % c.checkpoint_every == 0
                        and s.step_in_epoch != steps_this_epoch):  # end_epoch saves that one
                    self.save_last()
            bar.close()
            if stopped and s.step_in_epoch == 0:
                break
            self.end_epoch(partial=stopped, train_loss=s.loss_ema)
            if stopped:
                break
        return s

    def _epoch_exhausted(self, steps_this_epoch: int | None) -> bool:
        n = steps_this_epoch
        if n is None and self._mtl is not None:
            try:
                n = len(self._mtl)
            except TypeError:  # a sequential MultiTaskLoader over unsized loaders
                return False
        return n is not None and self.state.step_in_epoch >= n

    def end_epoch(self, partial: bool, train_loss: float | None) -> None:
        s = self.state
        t0 = time.perf_counter()
        raw_scores = None
        with contextlib.ExitStack() as stack:
            if self.ema is not None:  # select and save the averaged weights
                raw_scores = self.eval_fn(self.model)
                stack.enter_context(self.ema.applied(self.model))
            scores = self.eval_fn(self.model)
            best = {**s.best_dev, "overall": s.best_overall}
            improved = improved_tasks(scores, best, self.tasks, self.cfg.select)
            best_weights = None
            per_task = self.cfg.select == "per-task"
            if improved:  # copies: the live weights come back on exit
                best_weights = merge_best(self._best_state if per_task else None,
                                          self.model.state_dict(), improved)
                if per_task:
                    self._best_state = best_weights
        entry = {"epoch": s.epoch + 1, "partial": partial, "global_step": s.global_step,
                 "train_seconds": round(s.train_seconds, 2), "train_loss": train_loss,
                 "dev": scores, "eval_seconds": round(time.perf_counter() - t0, 2)}
        if raw_scores is not None:
            entry["dev_without_ema"] = raw_scores
        s.history.append(entry)
        logger.info("epoch %d%s dev %s", s.epoch + 1, " (partial)" if partial else "",
                    {k: round(v, 4) for k, v in scores.items()})
        if best_weights is not None:  # the same decision on every rank
            dev = merge_scores(scores, s.best_dev, improved, self.tasks) if per_task else scores
            s.best_overall, s.best_epoch, s.best_dev = dev["overall"], s.epoch + 1, dev
            s.best_epochs.update({t: s.epoch + 1 for t in improved})
            if self.env.is_main:
                save_checkpoint(self.ckpt_dir / "best", best_weights,
                                {"epoch": s.epoch + 1, "dev": dev,
                                 "task_epochs": s.best_epochs})
                logger.info("new best overall %.4f (weights of %s from epoch %d): saved %s",
                            dev["overall"], ", ".join(improved), s.epoch + 1,
                            self.ckpt_dir / "best")
        if not partial:
            s.epoch, s.step_in_epoch = s.epoch + 1, 0
            self._mtl = None  # the next epoch starts a fresh MultiTaskLoader
        self.save_last()

    # ------------------------------------------------------------------ resume
    def save_last(self) -> None:
        """Rank 0 writes the last checkpoint (every rank's RNG state gathered into it)."""
        rng = capture_rng(self.env)  # a collective: before rank 0 alone goes on
        if not self.env.is_main:
            return
        state: dict[str, Any] = {
            "run": asdict(self.state), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "streams": {t: st.state_dict() for t, st in self.streams.items()},
            "rng": rng,
            "world_size": self.env.world}
        if self._mtl is not None:
            state["mtlkit_loader"] = self._mtl.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.ckpt_dir / "last", self.model.state_dict(), state)

    def load_last(self) -> bool:
        """Restore model, optimizer, scheduler, loader positions and RNG; False if none.

        A corrupt or truncated ``last`` falls back to ``last.previous`` (with a warning).
        Every rank reads the same files.
        """
        path = self.ckpt_dir / "last"
        try:
            model_state, st, path = load_latest(path)
        except FileNotFoundError:
            return False
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(optimizer_state_from_json(st["optimizer"]))
        self.sched.load_state_dict(st["scheduler"])
        for t, ss in st["streams"].items():
            if t in self.streams:
                self.streams[t].load_state_dict(ss)
        restore_rng(st["rng"], self.env)
        if self.ema is not None:
            if "ema" not in st:
                raise ValueError(f"--resume --ema: {path} holds no weight average (was it "
                                 "written by a run without --ema?)")
            self.ema.load_state_dict(st["ema"])
        self._mtl_state = st.get("mtlkit_loader")
        self.state = RunState(**st["run"])
        if self.cfg.select == "per-task" and self.state.best_dev:
            # the experts chosen so far, to merge later epochs' improvements into
            self._best_state = load_latest(self.ckpt_dir / "best")[0]
        steps = all_gather_objects(self.state.global_step, self.env)
        if len(set(steps)) != 1:
            raise RuntimeError(f"--resume: the ranks loaded different checkpoints (steps "
                               f"{steps}); is {self.ckpt_dir} on a filesystem every rank sees?")
        logger.info("resumed from %s at epoch %d step %d (%.0f s trained)", path,
                    self.state.epoch + 1, self.state.step_in_epoch, self.state.train_seconds)
        return True

