"""MultiTaskTrainer's step time over a hand-written loop doing the same work, side by side.

A randomly initialised BERT (hidden 256, 4 layers, 4 heads, intermediate 1024), three task heads
(5-class CE, binary BCE, MSE), batch 16 per task, sequence length 64, CPU (2 threads by
default). Both sides draw the steps from the same ``MultiTaskLoader`` (interleaved: one batch
of each task), run each task's forward and backward (the plain sum) or ``MultiTaskOptimizer``
with PCGrad, clip the gradient norm at 1.0, take an AdamW step and a linear schedule step. A
step's time is the time from one optimizer step's end to the next (data, forward, backward,
clipping, update, the Trainer's callbacks and logging); the table holds medians over rounds
that run each side once, so that load from other processes hits both alike.

    python benchmarks/bench_trainer.py [--steps 12] [--warmup 2] [--rounds 3] [--threads 2]

The last line is ``trainer/hand: X.XX`` (the larger of the two ratios; target at most 1.05).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from transformers import (
    BertConfig,
    BertModel,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

import mtlkit
from mtlkit import MultiTaskLoader, MultiTaskOptimizer
from mtlkit.integrations.transformers import MultiTaskTrainer

TASKS = {"sst": 5, "qqp": 1, "sts": 1}
BATCH, SEQ, THREADS, LR = 16, 64, 2, 1e-4


class Model(nn.Module):
    """A random BERT shared by one linear head per task; ``model(task=..., **batch)``."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.heads = nn.ModuleDict({t: nn.Linear(256, n) for t, n in TASKS.items()})

    def forward(self, task, input_ids, labels):
        logits = self.heads[task](self.encoder(input_ids=input_ids).last_hidden_state[:, 0])
        if task == "sst":
            return F.cross_entropy(logits, labels)
        if task == "qqp":
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
        return F.mse_loss(logits.squeeze(-1), labels)


def datasets(rows: int) -> dict[str, list[dict]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for task in TASKS:
        ids = torch.randint(1000, 30000, (rows, SEQ), generator=g)
        labels = (torch.randint(0, 5, (rows,), generator=g) if task == "sst" else
                  torch.randint(0, 2, (rows,), generator=g).float() if task == "qqp" else
                  torch.rand(rows, generator=g) * 5)
        out[task] = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels, strict=True)]
    return out


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def hand_loop(data, steps: int, surgery: bool) -> list[float]:
    """What a user writes without the Trainer, doing the same work; the step end times."""
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True)
    wrapped = MultiTaskOptimizer(opt, mtlkit.weighting.PCGrad(seed=0)) if surgery else opt
    schedule = get_linear_schedule_with_warmup(opt, 0, steps)
    loaders = {t: DataLoader(rows, batch_size=BATCH, collate_fn=collate,
                             sampler=DistributedSampler(rows, 1, 0, shuffle=True, seed=0))
               for t, rows in data.items()}
    model.train()
    ends = [time.perf_counter()]
    for _, batches in zip(range(steps), MultiTaskLoader(loaders, seed=0), strict=False):
        for task, batch in batches.items():
            loss = model(task=task, **batch)
            if surgery:
                wrapped.task_backward(task, loss)
            else:
                loss.backward()
        if surgery:
            wrapped.combine()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        wrapped.step()
        schedule.step()
        model.zero_grad()
        ends.append(time.perf_counter())
    return ends


class StepEnds(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def trainer_loop(data, steps: int, surgery: bool, out: str) -> list[float]:
    torch.manual_seed(0)
    args = TrainingArguments(out, per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, weight_decay=0.0, optim="adamw_torch_fused",
                             max_grad_norm=1.0, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=10, disable_tqdm=True, seed=0)
    clock = StepEnds()
    trainer = MultiTaskTrainer(Model(), args, train_dataset=data, data_collator=collate,
                               callbacks=[clock],
                               weighting=mtlkit.weighting.PCGrad(seed=0) if surgery else None)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    data = datasets(BATCH * (args.steps + 1))
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for surgery in (False, True):
                for side, run in (("hand", hand_loop), ("trainer", trainer_loop)):
                    extra = (out,) if side == "trainer" else ()
                    ends = run(data, args.steps, surgery, *extra)
                    steps = [b - a for a, b in itertools.pairwise(ends)]
                    key = ("pcgrad" if surgery else "plain", side)
                    times.setdefault(key, []).extend(steps[args.warmup:])
    print(f"random BERT (hidden 256, 4 layers), 3 tasks x {BATCH} x {SEQ} tokens, "
          f"{args.threads} thread(s), torch {torch.__version__}; median of "
          f"{args.rounds} x {args.steps - args.warmup} steps")
    print("| combination | hand-written loop ms | MultiTaskTrainer ms | trainer / hand |")
    print("|---|---:|---:|---:|")
    ratios = []
    for combination in ("plain", "pcgrad"):
        hand = statistics.median(times[(combination, "hand")]) * 1e3
        trainer = statistics.median(times[(combination, "trainer")]) * 1e3
        ratios.append(trainer / hand)
        print(f"| {combination} | {hand:.1f} | {trainer:.1f} | {trainer / hand:.3f} |")
    print(f"trainer/hand: {max(ratios):.2f}")


if __name__ == "__main__":
    main()
