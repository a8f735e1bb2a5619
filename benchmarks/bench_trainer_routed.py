"""MultiTaskTrainer with ``per_sample_routing``: one backward split by rows against one per task.

A LoRAMoE on a randomly initialised BERT (hidden 256, 4 layers, 4 heads, intermediate 1024,
the base trained too, one r = 8 expert per task), three task heads, 16 rows per task and
optimizer step (one micro-batch of 16, or two of 8 with ``gradient_accumulation_steps=2``),
sequence length 64, CPU (2 threads by default). Every step is one routed forward over the
three tasks' rows. With PCGrad on the base's parameters the Trainer backpropagates it once
and splits the gradients by the tasks' rows (``MultiTaskOptimizer.stacked``); the other
column forces its fallback, a backward per task through the retained graph. The plain sum
(no weighting) is the reference. A step is the time from one optimizer step's end to the
next; medians over rounds that run every variant once.

    python benchmarks/bench_trainer_routed.py [--steps 8] [--warmup 2] [--rounds 2]

The last line is ``routed pcgrad/plain (accumulation 2): X.XX`` (the split's step).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile

import torch
from torch import nn
from transformers import BertConfig, BertModel, PrinterCallback, TrainingArguments

import mtlkit
from bench_pcgrad import task_loss
from bench_trainer import SEQ, TASKS, StepEnds, collate, datasets
from mtlkit import LoRAMoE
from mtlkit.integrations.transformers import MultiTaskTrainer

ROWS, THREADS, LR = 16, 2, 1e-4


class Routed(nn.Module):
    """LoRAMoE experts on a shared BERT, a head per task; ``task`` names every row's task."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024)
        self.moe = LoRAMoE(BertModel(config, add_pooling_layer=False), tasks=list(TASKS),
                           r=8, alpha=16, train_base=True)
        self.heads = nn.ModuleDict({t: nn.Linear(256, n) for t, n in TASKS.items()})

    def forward(self, task, input_ids, labels):
        hidden = self.moe(task=task, input_ids=input_ids).last_hidden_state[:, 0]
        if isinstance(task, str):
            return task_loss(task, self.heads[task](hidden), labels)
        losses, start = {}, 0
        for name in dict.fromkeys(task):  # the rows of a task are contiguous, in task order
            rows = slice(start, start + task.count(name))
            losses[name] = task_loss(name, self.heads[name](hidden[rows]), labels[name])
            start = rows.stop
        return losses


def run(data, steps: int, accumulation: int, variant: str, out: str) -> list[float]:
    torch.manual_seed(0)
    model = Routed()
    args = TrainingArguments(out, per_device_train_batch_size=ROWS // accumulation,
                             gradient_accumulation_steps=accumulation, max_steps=steps,
                             learning_rate=LR, weight_decay=0.0, optim="adamw_torch_fused",
                             max_grad_norm=1.0, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=10, disable_tqdm=True, seed=0)
    pcgrad = variant != "plain"
    shared = [p for n, p in model.moe.named_parameters() if "lora_" not in n and p.requires_grad]
    clock = StepEnds()
    trainer = MultiTaskTrainer(model, args, train_dataset=data, data_collator=collate,
                               callbacks=[clock], per_sample_routing=True,
                               weighting=mtlkit.weighting.PCGrad(seed=0) if pcgrad else None,
                               shared_params=shared if pcgrad else None)
    trainer.remove_callback(PrinterCallback)
    if variant == "pcgrad, a backward per task":
        trainer._stackable = False  # the fallback path, as for a model it cannot split
    trainer.train()
    return clock.ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    data = datasets(ROWS * (args.steps + 1))
    variants = ("plain", "pcgrad, split", "pcgrad, a backward per task")
    times: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for accumulation in (1, 2):
                for variant in variants:
                    ends = run(data, args.steps, accumulation, variant, out)
                    steps = [b - a for a, b in itertools.pairwise(ends)]
                    times.setdefault((accumulation, variant), []).extend(steps[args.warmup:])
    print(f"LoRAMoE on a random BERT (hidden 256, 4 layers), 3 tasks x {ROWS} rows x {SEQ} "
          f"tokens per step, {args.threads} thread(s), torch {torch.__version__}, CPU "
          f"{torch.backends.cpu.get_cpu_capability()}; median of {args.rounds} x "
          f"{args.steps - args.warmup} steps")
    print("| accumulation | variant | step ms | x plain |")
    print("|---:|---|---:|---:|")
    ratios = {}
    for accumulation in (1, 2):
        plain = statistics.median(times[(accumulation, "plain")])
        for variant in variants:
            step = statistics.median(times[(accumulation, variant)])
            ratios[(accumulation, variant)] = step / plain
            print(f"| {accumulation} | {variant} | {step * 1e3:.1f} | {step / plain:.2f} |")
    print(f"routed pcgrad/plain (accumulation 2): {ratios[(2, 'pcgrad, split')]:.2f}")


if __name__ == "__main__":
    main()
