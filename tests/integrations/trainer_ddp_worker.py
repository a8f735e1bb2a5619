"""One rank of the MultiTaskTrainer torchrun test (launched by test_trainer_ddp.py).

``python -m torch.distributed.run --nproc_per_node 2 trainer_ddp_worker.py MODE OUT`` trains
the tiny model with the per-rank batch size; MODE is ``sum``, ``pcgrad`` or ``loss`` (a loss
weighting), or ``pcgrad-accumulation`` (two micro-batches of one row per step). Each rank saves its
weights, how many all-reduces DDP itself issued (a counting comm hook), and its logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from hf_tiny_models import (
    CurvedScales,
    TinyMultiTask,
    make_datasets,
    pad_collate,
    quiet,
    training_args,
)

import mtlkit
from mtlkit.integrations.transformers import MultiTaskTrainer

SIZES = {"sst": 16, "qqp": 16, "sts": 8}
# full batches of 8 on every rank: the Trainer's eval loss is a mean of batch means, which
# equals the mean over the rows only when the batches are equal
EVAL_SIZES = {"sst": 16, "qqp": 32, "sts": 16}
STEPS = 3


class CountingTrainer(MultiTaskTrainer):
    """Counts the buckets DDP all-reduces (0 when the weighting syncs instead)."""

    ddp_allreduces = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not getattr(
                model, "_counted", False):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting(state, bucket):
                CountingTrainer.ddp_allreduces += 1
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, counting)
            model._counted = True
        return super().training_step(model, inputs, num_items_in_batch)


ALL_REDUCE_SIZES: list[int] = []


def _count_all_reduces() -> None:
    """Record the size of every torch.distributed.all_reduce (mtlkit's syncs call it)."""
    original = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        ALL_REDUCE_SIZES.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counted


def train(mode: str, out: Path, batch_size: int, accumulation: int = 1) -> dict:
    torch.manual_seed(0)
    model = TinyMultiTask(dropout=0.0)
    weighting = {"sum": None, "pcgrad": mtlkit.weighting.PCGrad(seed=0),
                 "loss": CurvedScales(3)}[mode.removesuffix("-accumulation")]
    backend = {"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}
    args = training_args(out, per_device_train_batch_size=batch_size, max_steps=STEPS,
                         gradient_accumulation_steps=accumulation, **backend)
    trainer = quiet(CountingTrainer(model, args, train_dataset=make_datasets(SIZES),
                                    eval_dataset=make_datasets(EVAL_SIZES, seed=7),
                                    data_collator=pad_collate, weighting=weighting))
    trainer.train()
    metrics = trainer.evaluate()
    surgery_bytes = None
    if trainer._surgery is not None:
        surgery_bytes = trainer._surgery.last_stats.comm_bytes
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ddp_allreduces": CountingTrainer.ddp_allreduces,
        "surgery_bytes": surgery_bytes,
        "log": [h for h in trainer.state.log_history if "loss" in h],
        "all_reduce_sizes": list(ALL_REDUCE_SIZES),
        "eval": {k: v for k, v in metrics.items() if k.endswith("_loss")},
        "trainable": sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]),
        "num_params": sum(len(g["params"]) for g in trainer.optimizer.param_groups),
        "weighting": None if mode != "loss" else weighting.log_vars.detach().clone(),
    }


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    _count_all_reduces()
    if mode.endswith("-accumulation"):  # 2 micro-batches of 1 row: still 2 rows per rank
        result = train(mode, out, batch_size=1, accumulation=2)
    else:
        result = train(mode, out, batch_size=2)
    rank = dist.get_rank()
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()  # leave together (the teardown of tests/gloo_ranks.py)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
