"""Multi-task BERT on SST-5, QQP and STS-B: the reference pipeline of mtlkit.

Reproduces the rows of Table 1 of "Multi-task learning with BERT" (He and Zhao, sections 4-5)
on the CS224N data with, by default, the small all-MiniLM-L6-v2 on CPU, built from the
library's primitives: ``mtlkit.MultiTaskLoader`` draws every batch schedule, ``mtlkit.PCGrad``
(or any ``mtlkit.weighting``) combines the task gradients, ``mtlkit.SmartLoss``,
``mtlkit.SimCSELoss`` with ``mtlkit.mine_pairs``, and ``mtlkit.LoRAMoE``. Every ingredient is a
flag; ``--preset NAME`` sets the flags of one Table 1 row or a named recipe (flags given
explicitly win); every flag is a field of ``multitask_bert.config.RunConfig``.

Examples::

    python examples/bert_sst_qqp_sts.py --preset best
    python examples/bert_sst_qqp_sts.py --preset ce-interleaved-clip --out runs/clip
    python examples/bert_sst_qqp_sts.py --preset baseline --max-train-per-task 200 --epochs 1

``--preset best`` trains the best recipe measured on the embedded MiniLM (two Quora + STS-B
models and three SST-5 models, two epochs each, averaged per task) into ``--out`` (default
runs/best): OUT/member-K are the members, OUT holds the ensemble's outputs.

Outputs under ``--out``: metrics.json (its ``config`` reloads with
``RunConfig.from_metrics``), predictions/{sst,qqp,sts}-{dev,test}.csv, plots/*.png, errors.md
and checkpoints/{best,last} (safetensors + JSON; the one before each is kept as
``*.previous``, and a corrupt or truncated checkpoint falls back to it with a warning).

Several processes (``torchrun``; gloo on CPU, NCCL with one GPU per ``LOCAL_RANK``)::

    torchrun --standalone --nproc_per_node=2 examples/bert_sst_qqp_sts.py \\
        --preset ce-interleaved-clip --threads 1 --out runs/ddp

``--batch-size`` stays the global batch per task: every rank draws the same batches and trains
on a disjoint share of their rows, and the gradients are averaged across ranks before
clipping, so the hyper-parameters mean the same in one process and in several. Evaluation is
sharded over the ranks and gathered; only rank 0 writes files.

Reproducibility (what makes a resumed run equal an uninterrupted one): the same ``--seed``, a
fixed ``--threads`` (the thread count changes float summation order on CPU),
``--deterministic``, and the same number of processes (each rank's dropout RNG is saved in
the checkpoint). ``--checkpoint-every N`` bounds the work lost to a crash to N steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from multitask_bert.config import RunConfig
from multitask_bert.flags import build_parser as _build_parser
from multitask_bert.flags import parse_config

logger = logging.getLogger("bert_sst_qqp_sts")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: one flag per :class:`RunConfig` field, each with its help text."""
    return _build_parser(description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``argv``: the preset's values, then the flags given."""
    return parse_config(argv, build_parser())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, run the pipeline, return the metrics written to OUT/metrics.json."""
    cfg = parse_args(argv)
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    level = logging.DEBUG if cfg.verbose else logging.INFO
    if rank:  # under torchrun the other ranks log warnings and errors only (unless -v)
        level = logging.DEBUG if cfg.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s "
                        + ("" if rank is None else f"[rank {rank}] ") + "%(name)s: %(message)s")
    from multitask_bert.pipeline import run

    return run(cfg)


if __name__ == "__main__":
    main()
