"""Gradient surgery and a SMART term on a Hugging Face encoder, in a plain PyTorch loop.

The three tasks of ``multitask_interleaved.py`` (its data, model and evaluation are reused)
with two changes to the training step:

- every task's loss gets SMART's adversarial smoothness term (``mtlkit.SmartLoss``, the paper's
  Eq. 4), computed on the encoder's word embeddings built by ``mtlkit.hf_smart_inputs``;
- the three losses are combined by ``mtlkit.MultiTaskOptimizer`` with a weighting of
  ``mtlkit.weighting`` (here PCGrad, the paper's gradient surgery, Eq. 3): it wraps the AdamW
  optimizer, and ``optimizer.backward(losses)`` leaves the combined gradient in ``.grad``, so
  gradient clipping still runs between ``backward`` and ``step``.

It logs the losses, the SMART terms, how many task pairs had conflicting gradients and the
weights the gradients were combined with, and prints dev scores at the end.

Run (about 2 minutes on 2 CPU cores)::

    python examples/surgery_smart.py --data-dir /path/to/data
    python examples/surgery_smart.py --steps 3 --dev-rows 32      # a smoke test
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import mtlkit
from mtlkit import MultiTaskLoader, MultiTaskOptimizer, SmartLoss, hf_smart_inputs
from multitask_interleaved import LOSSES, TASKS, Collate, build, evaluate, load_rows

logger = logging.getLogger("surgery_smart")
# SMART's divergence per task: softmax laws (SST), Bernoulli laws of one logit (Quora), MSE.
SMART_KIND = {"sst": "classification", "qqp": "binary", "sts": "regression"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=20, help="training steps (one batch per task)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per task and step")
    p.add_argument("--lr", type=float, default=2e-4, help="for short runs; lower it for long ones")
    p.add_argument("--smart-weight", type=float, default=1.0, help="lambda_s of Eq. 4")
    p.add_argument("--dev-rows", type=int, default=200, help="dev rows per task (a random subset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def main() -> None:
    args = parse_args()
    model, tokenizer = build(args)
    train = {t: DataLoader(load_rows(args.data_dir, t, "train"), batch_size=args.batch_size,
                           shuffle=True, collate_fn=Collate(tokenizer, t)) for t in TASKS}
    dev = {t: DataLoader(load_rows(args.data_dir, t, "dev", args.dev_rows), batch_size=64,
                         collate_fn=Collate(tokenizer, t)) for t in TASKS}
    smart = {t: SmartLoss(kind=kind) for t, kind in SMART_KIND.items()}
    # The weighting combines the task gradients of the shared encoder (mtlkit.PCGrad is this
    # with weighting.PCGrad; any other mtlkit.weighting.Weighting can take its place); each
    # head keeps its own task's plain gradient.
    optimizer = MultiTaskOptimizer(
        torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0,
                          fused=True),
        weighting=mtlkit.weighting.PCGrad(seed=args.seed),
        shared_params=model.encoder.parameters())
    model.train()
    loader = MultiTaskLoader(train, mode="interleaved", seed=args.seed, steps_per_epoch=args.steps)
    progress = tqdm(loader, desc="train")
    for i, step in enumerate(progress, 1):
        losses, terms = {}, {}
        for task, (x, y) in step.items():
            mask = x["attention_mask"]
            # The word embeddings, and a forward_fn that runs the rest of the model from them.
            embeddings, forward_fn = hf_smart_inputs(
                model.encoder, lambda out, t=task, m=mask: model.predict(t, out, m),
                x["input_ids"], mask, token_type_ids=x["token_type_ids"])
            output = forward_fn(embeddings)                  # the clean pass
            terms[task] = smart[task](forward_fn, embeddings, output, attention_mask=mask)
            losses[task] = LOSSES[task](output, y) + args.smart_weight * terms[task]
        optimizer.zero_grad()
        stats = optimizer.backward(losses)                   # surgery-combined .grad
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        progress.set_postfix(conflicts=stats.num_conflicts)
        if i == 1 or i % 5 == 0 or i == args.steps:
            logger.info("step %d/%d loss %s smart %s conflicts %d/3 weights %s", i, args.steps,
                        " ".join(f"{t}={v.item():.4f}" for t, v in losses.items()),
                        " ".join(f"{t}={v.item():.2e}" for t, v in terms.items()),
                        stats.num_conflicts, " ".join(f"{w:.3f}" for w in stats.weights.tolist()))
    scores = evaluate(model, dev)
    logger.info("dev (%d rows per task): %s", args.dev_rows,
                " ".join(f"{k}={v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with logging_redirect_tqdm():
        main()
