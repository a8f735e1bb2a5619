"""SST-5, Quora and STS-B on one MiniLM, trained by transformers.Trainer with mtlkit.

``mtlkit.integrations.transformers.MultiTaskTrainer`` takes one dataset per task and draws every
step from ``mtlkit.MultiTaskLoader`` ("interleaved": one batch of each task; the smaller tasks are
cycled through an epoch as long as Quora's). The model cross-encodes a pair as one sequence
``[CLS] s1 [SEP] s2 [SEP]``, and each task's loss comes from ``model(task=..., **batch)``. The
Trainer does the rest: AdamW, the linear schedule, clipping at ``max_grad_norm``, logging (with a
loss per task) and per-task evaluation (``eval_sst_accuracy``, ``eval_qqp_accuracy``,
``eval_sts_pearson``). ``--weighting pcgrad`` (or any name of ``mtlkit.weighting``) combines the
task gradients instead of summing the losses.

Run (one epoch: 884 steps, one batch of each task per step, as many as Quora has batches)::

    python examples/hf_trainer_multitask.py --data-dir /path/to/cs224n/data
    python examples/hf_trainer_multitask.py --max-steps 3 --dev-rows 32   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from mtlkit.integrations.transformers import MultiTaskTrainer, resolve_pretrained
from multitask_bert.data import read_split  # the CS224N CSV reader of the full pipeline

OUTPUTS = {"sst": 5, "qqp": 1, "sts": 1}  # SST-5 logits, one paraphrase logit, one score


class CrossEncoder(nn.Module):
    """A shared encoder, mean-pooled, and one linear head per task; returns loss and logits."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder, self.dropout = encoder, nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, n) for t, n in OUTPUTS.items()})

    def forward(self, task, input_ids, attention_mask, token_type_ids=None, labels=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        logits = self.heads[task](self.dropout(pooled)).float()
        logits = logits if task == "sst" else logits.squeeze(-1)
        loss = None
        if labels is not None:  # CE (SST), BCE on one logit (Quora), MSE on the score (STS-B)
            loss = (F.cross_entropy(logits, labels) if task == "sst" else
                    F.binary_cross_entropy_with_logits(logits, labels) if task == "qqp" else
                    F.mse_loss(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def load_rows(data_dir: str, task: str, split: str, n: int | None = None) -> list[tuple]:
    """``(sentence1, sentence2 or None, label)`` rows; a seeded random ``n`` of them if given."""
    s = read_split(data_dir, task, split)
    rows = list(zip(s.sent1, s.sent2 or [None] * len(s.sent1), s.labels, strict=True))
    return rows if n is None or n >= len(rows) else random.Random(0).sample(rows, n)


class Collate:
    """Tokenize a batch of rows (a pair as one sequence) and attach the labels."""

    def __init__(self, tokenizer, task: str, max_length: int = 128) -> None:
        self.tokenizer, self.task, self.max_length = tokenizer, task, max_length

    def __call__(self, rows: list[tuple]) -> dict[str, torch.Tensor]:
        s1, s2, labels = zip(*rows, strict=True)
        batch = self.tokenizer(list(s1), None if s2[0] is None else list(s2), padding=True,
                               truncation=True, max_length=self.max_length, return_tensors="pt")
        dtype = torch.long if self.task == "sst" else torch.float32
        return {**batch, "labels": torch.tensor(labels, dtype=dtype)}


def accuracy(p):  # SST-5: the arg-max class; Quora: a positive logit means "duplicate"
    predicted = p.predictions.argmax(-1) if p.predictions.ndim == 2 else p.predictions > 0
    return {"accuracy": float((predicted == p.label_ids).mean())}


def pearson(p):
    return {"pearson": float(np.corrcoef(p.predictions, p.label_ids)[0, 1])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=16, help="rows per task and step")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weighting", default=None, help="e.g. pcgrad (default: sum the losses)")
    p.add_argument("--dev-rows", type=int, default=None, help="a random subset of each dev set")
    p.add_argument("--logging-steps", type=int, default=50)
    p.add_argument("--out", default="runs/hf_trainer_multitask")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def main() -> None:
    args = parse_args()
    path = resolve_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    model = CrossEncoder(AutoModel.from_pretrained(path, add_pooling_layer=False))
    training = TrainingArguments(
        args.out, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, weight_decay=0.0, max_grad_norm=1.0,  # the paper's clipping
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # GPU only
        logging_steps=args.logging_steps, save_strategy="no", report_to=[], disable_tqdm=True,
        seed=args.seed)
    trainer = MultiTaskTrainer(
        model, training,
        train_dataset={t: load_rows(args.data_dir, t, "train") for t in OUTPUTS},
        eval_dataset={t: load_rows(args.data_dir, t, "dev", args.dev_rows) for t in OUTPUTS},
        data_collator={t: Collate(tokenizer, t) for t in OUTPUTS},
        compute_metrics={"sst": accuracy, "qqp": accuracy, "sts": pearson},
        sampling="interleaved", weighting=args.weighting)
    start = time.time()
    trainer.train()
    minutes = (time.time() - start) / 60
    scores = trainer.evaluate()
    sst, qqp, sts = (scores["eval_sst_accuracy"], scores["eval_qqp_accuracy"],
                     scores["eval_sts_pearson"])
    print(f"dev: SST-5 accuracy {sst:.3f}, Quora accuracy {qqp:.3f}, STS-B Pearson {sts:.3f}; "
          f"overall {(sst + qqp + (sts + 1) / 2) / 3:.3f} (the paper's Eq. 7)")
    print(f"training: {trainer.state.global_step} steps in {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
