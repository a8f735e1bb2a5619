"""The training loop: sequential (baseline) or interleaved steps, dev evaluation every epoch,
best checkpoint by the overall dev score, and ``--resume`` from the last checkpoint.

One step draws one batch of each task in the step's plan (interleaved: every task; sequential:
one task at a time, each dataset in turn, as in the paper's baseline), sums the task losses
(plus the optional SMART terms), backpropagates (plainly or through PCGrad), optionally clips
the gradient norm, and steps AdamW (betas (0.9, 0.99), weight decay 0, as in the paper).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import TaskStream, make_loader
from .checkpoint import load_checkpoint, optimizer_state_from_json, save_checkpoint
from .data import TokenizedTask
from .model import MultiTaskBert, task_loss
from .primitives import SmartTerm, iterate_mtlkit, mtlkit_loader, wrap_surgery

logger = logging.getLogger(__name__)

EvalFn = Callable[[MultiTaskBert], dict[str, float]]


@dataclass
class TrainConfig:
    """The knobs of :func:`train` (the CLI flags of the same names)."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    schedule: str = "interleaved"  # or "sequential"
    steps_per_epoch: int | None = None  # interleaved default: batches of the largest task
    lr_schedule: str = "constant"  # or "linear" (decay to 0)
    clip_norm: float = 0.0
    surgery: bool = False
    smart_weight: float = 0.0
    smart_mode: str = "projected"  # or "normalized" (smart-pytorch / mt-dnn behaviour)
    loader: str = "builtin"  # or "mtlkit"
    bf16: bool = False
    seed: int = 0
    max_train_seconds: float | None = None
    max_steps: int | None = None
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in ("interleaved", "sequential"):
            raise ValueError(f"schedule must be 'interleaved' or 'sequential', got "
                             f"{self.schedule!r}")
        if self.loader not in ("builtin", "mtlkit"):
            raise ValueError(f"loader must be 'builtin' or 'mtlkit', got {self.loader!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got "
                             f"{self.lr_schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.smart_mode not in ("projected", "normalized"):
            raise ValueError(f"smart_mode must be 'projected' or 'normalized', got "
                             f"{self.smart_mode!r}")
        if self.lr <= 0 or self.clip_norm < 0 or self.smart_weight < 0:
            raise ValueError("lr must be > 0; clip_norm and smart_weight must be >= 0")


@dataclass
class RunState:
    """Progress kept in the last checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0
    best_overall: float = float("-inf")
    best_epoch: int = -1
    best_dev: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def autocast_factory(device: torch.device, bf16: bool) -> Callable[[], Any]:
    """A zero-argument context factory: bf16 autocast on ``device``, or nothing."""
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


class Trainer:
    """Runs :func:`train`'s loop; see the module docstring."""

    def __init__(self, cfg: TrainConfig, model: MultiTaskBert,
                 train_sets: dict[str, TokenizedTask], eval_fn: EvalFn, device: torch.device,
                 ckpt_dir: Path, state: RunState | None = None) -> None:
        self.cfg, self.model, self.train_sets, self.eval_fn = cfg, model, train_sets, eval_fn
        self.device, self.ckpt_dir = device, ckpt_dir
        self.tasks = list(train_sets)
        self.state = state or RunState()
        self.autocast = autocast_factory(device, cfg.bf16)
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.base_opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99),
                                          weight_decay=0.0)
        self.opt: Any = (wrap_surgery(self.base_opt, model, cfg.seed) if cfg.surgery
                         else self.base_opt)
        self.smart = SmartTerm(cfg.smart_weight, cfg.smart_mode) if cfg.smart_weight > 0 else None
        self.streams = {t: TaskStream(make_loader(ds, cfg.batch_size, True, cfg.seed + k))
                        for k, (t, ds) in enumerate(train_sets.items())}
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
            loaders = {t: s.loader for t, s in self.streams.items()}
            mode = "interleaved" if self.cfg.schedule == "interleaved" else "sequential"
            for s in self.streams.values():
                s.sampler.set_epoch(self.state.epoch)
            mtl = mtlkit_loader(loaders, mode, self.cfg.seed + self.state.epoch)
            yield from iterate_mtlkit(mtl)
            return
        for plan in self.plan[self.state.step_in_epoch:]:
            yield {t: self.streams[t].next() for t in plan}

    # ------------------------------------------------------------------ one step
    def step(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        losses: dict[str, torch.Tensor] = {}
        for task, batch in batches.items():
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "index"}
            labels = batch.pop("labels")
            with self.autocast():
                if self.smart is not None:
                    out, reg = self.smart.task_output_and_loss(self.model, task, batch)
                else:
                    out, reg = self.model(task, batch), None
            loss = task_loss(task, out, labels)
            losses[task] = loss if reg is None else loss + reg.float()
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.surgery:
            self.opt.backward(losses)
        else:
            torch.stack(list(losses.values())).sum().backward()
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
        self.opt.step()
        self.sched.step()
        return {t: float(v.detach()) for t, v in losses.items()}

    # ------------------------------------------------------------------ loop
    def out_of_budget(self) -> bool:
        c, s = self.cfg, self.state
        return ((c.max_train_seconds is not None and s.train_seconds >= c.max_train_seconds)
                or (c.max_steps is not None and s.global_step >= c.max_steps))

    def run(self) -> RunState:
        s, c = self.state, self.cfg
        while s.epoch < c.epochs and not self.out_of_budget():
            self.model.train()  # from_pretrained hands the encoder back in eval mode
            steps_this_epoch = len(self.plan) if c.loader == "builtin" else None
            bar = tqdm(total=steps_this_epoch, initial=s.step_in_epoch,
                       desc=f"epoch {s.epoch + 1}/{c.epochs}", disable=not c.progress,
                       dynamic_ncols=True, leave=False)
            ema: float | None = None
            stopped = False
            for batches in self._step_batches():
                if self.out_of_budget():
                    stopped = True
                    break
                t0 = time.perf_counter()
                losses = self.step(batches)
                dt = time.perf_counter() - t0
                s.train_seconds += dt
                s.global_step += 1
                s.step_in_epoch += 1
                total = sum(losses.values())
                ema = total if ema is None else 0.95 * ema + 0.05 * total
                n_ex = sum(len(b["index"]) for b in batches.values())
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.4f}", ex_s=f"{n_ex / max(dt, 1e-9):.1f}")
                if c.log_every and s.global_step % c.log_every == 0:
                    logger.info("step %d (epoch %d) loss %.4f %s %.1f ex/s", s.global_step,
                                s.epoch + 1, ema, {k: round(v, 4) for k, v in losses.items()},
                                n_ex / max(dt, 1e-9))
            bar.close()
            if stopped and s.step_in_epoch == 0:
                break
            self.end_epoch(partial=stopped, train_loss=ema)
            if stopped:
                break
        return s

    def end_epoch(self, partial: bool, train_loss: float | None) -> None:
        s = self.state
        t0 = time.perf_counter()
        scores = self.eval_fn(self.model)
        entry = {"epoch": s.epoch + 1, "partial": partial, "global_step": s.global_step,
                 "train_seconds": round(s.train_seconds, 2), "train_loss": train_loss,
                 "dev": scores, "eval_seconds": round(time.perf_counter() - t0, 2)}
        s.history.append(entry)
        logger.info("epoch %d%s dev %s", s.epoch + 1, " (partial)" if partial else "",
                    {k: round(v, 4) for k, v in scores.items()})
        if scores["overall"] > s.best_overall:
            s.best_overall, s.best_epoch, s.best_dev = scores["overall"], s.epoch + 1, scores
            save_checkpoint(self.ckpt_dir / "best", self.model.state_dict(),
                            {"epoch": s.epoch + 1, "dev": scores})
            logger.info("new best overall %.4f: saved %s", scores["overall"],
                        self.ckpt_dir / "best")
        if not partial:
            s.epoch, s.step_in_epoch = s.epoch + 1, 0
        self.save_last()

    # ------------------------------------------------------------------ resume
    def save_last(self) -> None:
        state = {"run": asdict(self.state), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(),
                 "streams": {t: st.state_dict() for t, st in self.streams.items()},
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        save_checkpoint(self.ckpt_dir / "last", self.model.state_dict(), state)

    def load_last(self) -> bool:
        """Restore model, optimizer, scheduler, loader positions and RNG; False if none."""
        path = self.ckpt_dir / "last"
        if not path.exists() and not path.with_name("last.old").exists():
            return False
        model_state, st = load_checkpoint(path)
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(optimizer_state_from_json(st["optimizer"]))
        self.sched.load_state_dict(st["scheduler"])
        for t, ss in st["streams"].items():
            if t in self.streams:
                self.streams[t].load_state_dict(ss)
        torch.set_rng_state(st["rng"]["torch"])
        random.setstate(_tuples(st["rng"]["python"]))
        self.state = RunState(**st["run"])
        logger.info("resumed from %s at epoch %d step %d (%.0f s trained)", path,
                    self.state.epoch + 1, self.state.step_in_epoch, self.state.train_seconds)
        return True


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
