"""Multi-task fine-tuning, the paper's best row: cross-encoding + interleaved loading + clipping.

One MiniLM encoder learns SST-5 (5-way sentiment), Quora (paraphrase or not) and STS-B
(similarity 0-5) at once. A pair is cross-encoded as one sequence ``[CLS] s1 [SEP] s2 [SEP]``;
every step takes one batch of every task from ``mtlkit.MultiTaskLoader`` (its "interleaved"
mode cycles the smaller tasks), sums the three losses (the paper's Eq. 1), clips the gradient
norm at 1.0 and takes an AdamW step. The dev scores and the paper's overall score (Eq. 7) are
printed at the end. ``examples/bert_sst_qqp_sts.py`` is the full application.

Run (about 2 minutes on 2 CPU cores; the data are the CS224N CSV files)::

    python examples/multitask_interleaved.py --data-dir /path/to/data
    python examples/multitask_interleaved.py --steps 4 --dev-rows 32   # a smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import random

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoModel, AutoTokenizer

from mtlkit import MultiTaskLoader
from mtlkit.integrations import resolve_pretrained  # the MiniLM name -> its packaged copy
from multitask_bert.csv_data import read_split  # the CS224N CSV reader of the full pipeline

logger = logging.getLogger("multitask_interleaved")
OUTPUTS = {"sst": 5, "qqp": 1, "sts": 1}  # SST-5 logits, one paraphrase logit, one score
TASKS = tuple(OUTPUTS)
# Cross-entropy (SST), binary cross-entropy on one logit (Quora), MSE on the score (STS-B).
LOSSES = {"sst": F.cross_entropy, "qqp": F.binary_cross_entropy_with_logits, "sts": F.mse_loss}


def load_rows(data_dir: str, task: str, split: str, n: int | None = None) -> list[tuple]:
    """``(sentence1, sentence2 or None, label)`` rows; a seeded random ``n`` of them if given."""
    s = read_split(data_dir, task, split)
    rows = list(zip(s.sent1, s.sent2 or [None] * len(s), s.labels, strict=True))
    return rows if n is None or n >= len(rows) else random.Random(0).sample(rows, n)


class Collate:
    """Tokenize a batch of rows: a pair becomes one ``[CLS] s1 [SEP] s2 [SEP]`` sequence."""

    def __init__(self, tokenizer, task: str, max_length: int = 128) -> None:
        self.tokenizer, self.task, self.max_length = tokenizer, task, max_length

    def __call__(self, rows: list[tuple]) -> tuple[dict, torch.Tensor]:
        s1, s2, labels = zip(*rows, strict=True)
        inputs = self.tokenizer(list(s1), None if s2[0] is None else list(s2), padding=True,
                                truncation=True, max_length=self.max_length, return_tensors="pt")
        return dict(inputs), torch.tensor(labels, dtype=torch.long if self.task == "sst"
                                          else torch.float32)


class MultiTaskModel(torch.nn.Module):
    """A shared encoder, mean-pooled, and one linear head per task."""

    def __init__(self, encoder: torch.nn.Module, hidden_size: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden_size or encoder.config.hidden_size
        self.encoder, self.dropout = encoder, torch.nn.Dropout(dropout)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(hidden, n)
                                          for t, n in OUTPUTS.items()})

    def forward(self, task: str, inputs: dict) -> torch.Tensor:
        return self.predict(task, self.encode(task, inputs), inputs["attention_mask"])

    def encode(self, task: str, inputs: dict):
        """The encoder's output (the same encoder for every task here)."""
        return self.encoder(**inputs)

    def predict(self, task: str, encoded, attention_mask: torch.Tensor) -> torch.Tensor:
        """Task outputs from the encoder's output: (B, 5) logits for SST, (B,) otherwise."""
        hidden = encoded.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        out = self.heads[task](self.dropout(pooled))
        return out if task == "sst" else out.squeeze(-1)


@torch.no_grad()
def evaluate(model: MultiTaskModel, loaders: dict[str, DataLoader]) -> dict[str, float]:
    """Dev accuracy (SST, Quora), Pearson correlation (STS-B) and the overall score (Eq. 7)."""
    model.eval()
    scores = {}
    for task, loader in loaders.items():
        outs, labels = zip(*[(model(task, x), y) for x, y in tqdm(loader, desc=f"dev {task}")],
                           strict=True)
        out, y = torch.cat(outs), torch.cat(labels)
        if task == "sst":
            scores[task] = (out.argmax(-1) == y).float().mean().item()
        elif task == "qqp":
            scores[task] = ((out > 0).float() == y).float().mean().item()
        else:
            scores[task] = torch.corrcoef(torch.stack([out, y]))[0, 1].item()
    model.train()
    scores["overall"] = (scores["sst"] + scores["qqp"] + (scores["sts"] + 1) / 2) / 3
    return scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=60, help="training steps (one batch per task)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per task and step")
    p.add_argument("--lr", type=float, default=2e-4, help="for short runs; lower it for long ones")
    p.add_argument("--dev-rows", type=int, default=300, help="dev rows per task (a random subset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def build(args: argparse.Namespace) -> tuple[MultiTaskModel, object]:
    """The model (the pretrained encoder plus fresh heads) and its tokenizer."""
    path = resolve_pretrained(args.model)
    torch.manual_seed(args.seed)
    return MultiTaskModel(AutoModel.from_pretrained(path)), AutoTokenizer.from_pretrained(path)


def main() -> None:
    args = parse_args()
    model, tokenizer = build(args)
    train = {t: DataLoader(load_rows(args.data_dir, t, "train"), batch_size=args.batch_size,
                           shuffle=True, collate_fn=Collate(tokenizer, t)) for t in TASKS}
    dev = {t: DataLoader(load_rows(args.data_dir, t, "dev", args.dev_rows), batch_size=64,
                         collate_fn=Collate(tokenizer, t)) for t in TASKS}
    # One batch of every task per step; a task whose loader runs out starts it again.
    loader = MultiTaskLoader(train, mode="interleaved", seed=args.seed, steps_per_epoch=args.steps)
    # The paper's Adam settings; fused=True runs one kernel over all parameters (CPU, CUDA).
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99),
                                  weight_decay=0.0, fused=True)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=args.steps)
    model.train()
    for i, step in enumerate(tqdm(loader, desc="train"), 1):
        losses = {t: LOSSES[t](model(t, x), y) for t, (x, y) in step.items()}
        optimizer.zero_grad()
        sum(losses.values()).backward()                                 # Eq. 1: the plain sum
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # the paper's clipping
        optimizer.step()
        scheduler.step()
        if i == 1 or i % 20 == 0 or i == args.steps:
            logger.info("step %d/%d loss %s", i, args.steps,
                        " ".join(f"{t}={v.item():.4f}" for t, v in losses.items()))
    scores = evaluate(model, dev)
    logger.info("dev (%d rows per task): %s", args.dev_rows,
                " ".join(f"{k}={v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with logging_redirect_tqdm():
        main()
