"""The training of ``multitask_interleaved.py`` in several processes, under ``torchrun``.

Every process (rank) holds the whole model and trains it on its own share of each task: a
``DistributedSampler`` per task splits that task's rows across the ranks, and
``mtlkit.MultiTaskLoader`` draws the same task schedule on every rank (it depends on the seed
and the epoch only), so at every step all ranks train the same task(s). After the backward pass
``mtlkit.average_gradients`` averages the gradients across ranks; every rank then clips and
steps alike, so the weights stay equal on every rank. (DDP's wrapper would do the averaging
too, but it needs one forward per backward, and here each task has its own forward.)
``--batch-size`` is the global batch per task: each rank takes its share of the rows, so the
run means the same on any number of processes. Rank 0 evaluates and prints the dev scores.

Run (on CPU, with gloo; about 2 minutes with 2 processes on 2 CPU cores; on GPUs, use "nccl"
and move the model and the batches to ``cuda:LOCAL_RANK``)::

    torchrun --nproc-per-node 2 examples/torchrun_multitask.py --data-dir /path/to/data
    torchrun --nproc-per-node 2 examples/torchrun_multitask.py --mode proportional --steps 4
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import multitask_interleaved as single
from mtlkit import MultiTaskLoader, average_gradients

logger = logging.getLogger("torchrun_multitask")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--mode", choices=("interleaved", "round_robin", "proportional"),
                   default="interleaved", help="the MultiTaskLoader schedule")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="rows per task and step, all ranks")
    p.add_argument("--lr", type=float, default=2e-4, help="for short runs; lower it for long ones")
    p.add_argument("--dev-rows", type=int, default=300, help="dev rows per task (a random subset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")  # torchrun sets the rank, world size and address
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if args.batch_size % world:
        raise ValueError(f"--batch-size: expected a multiple of the {world} processes, "
                         f"got {args.batch_size}")
    model, tokenizer = single.build(args)  # the same seed, so the same heads on every rank
    train = {}
    for task in single.TASKS:
        rows = single.load_rows(args.data_dir, task, "train")
        sampler = DistributedSampler(rows, shuffle=True, seed=args.seed)  # this rank's share
        train[task] = DataLoader(rows, batch_size=args.batch_size // world, sampler=sampler,
                                 collate_fn=single.Collate(tokenizer, task))
    loader = MultiTaskLoader(train, mode=args.mode, seed=args.seed, steps_per_epoch=args.steps)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=args.steps)
    drawn = []  # the task(s) of each step, to check that every rank drew the same
    model.train()
    for i, step in enumerate(tqdm(loader, desc="train", disable=rank != 0), 1):
        batches = step if isinstance(step, dict) else dict([step])  # interleaved: every task
        drawn.append(tuple(batches))
        losses = {t: single.LOSSES[t](model(t, x), y) for t, (x, y) in batches.items()}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        average_gradients(params)                  # the mean over ranks, in every .grad
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        optimizer.step()
        scheduler.step()
        if i == 1 or i % 20 == 0 or i == args.steps:
            logger.info("step %d/%d loss (rank 0's rows) %s", i, args.steps,
                        " ".join(f"{t}={v.item():.4f}" for t, v in losses.items()))

    every_rank = [None] * world
    dist.all_gather_object(every_rank, drawn)
    checksum = torch.cat([p.detach().reshape(-1) for p in params]).double().sum().reshape(1)
    checksums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(checksums, checksum)
    logger.info("%d ranks; the same tasks at every step on every rank: %s; equal weights: %s",
                world, all(d == drawn for d in every_rank),
                all(torch.equal(c, checksum) for c in checksums))
    if rank == 0:
        dev = {t: DataLoader(single.load_rows(args.data_dir, t, "dev", args.dev_rows),
                             batch_size=64, collate_fn=single.Collate(tokenizer, t))
               for t in single.TASKS}
        scores = single.evaluate(model, dev)
        logger.info("dev (%d rows per task): %s", args.dev_rows,
                    " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with logging_redirect_tqdm():
        main()
