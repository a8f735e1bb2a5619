#!/usr/bin/env python
"""Train an ensemble of runs under one training budget, or combine finished runs.

With ``--members N``, the flags after ``--`` are one run of ``bert_sst_qqp_sts.py`` (the
recipe); it is trained N times, at seeds ``SEED, SEED + 1, ...`` (``--seed`` of the recipe,
default 0), each with ``--budget-minutes / N`` training minutes, into ``OUT/member-K``. With
``--runs DIR ...`` the given finished runs are combined as they are. Either way the members'
best checkpoints are run over every dev and test set and their outputs averaged (SST-5
probabilities, QQP logits, STS-B scores; see ``multitask_bert/ensemble.py``), and OUT gets what
a single run writes: ``metrics.json`` (``best_dev`` of the ensemble, the members, and
``train_seconds``, the sum of theirs: running the members over the dev and test sets is
prediction work and is not counted, as a single run's evaluation is not), ``predictions/``,
``plots/`` and ``errors.md``.

Examples::

    # two members of a recipe at seeds 0 and 1, 15 training minutes each
    python examples/ensemble.py --members 2 --budget-minutes 30 --out runs/ens -- \\
        --preset ce-mixture-clip --bf16 --pooling mean --lr 8e-5 --lr-schedule linear
    # combine two finished runs
    python examples/ensemble.py --runs runs/G runs/I --out runs/G+I
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bert_sst_qqp_sts as cli
from multitask_bert.data import read_split
from multitask_bert.ensemble import Member, ensemble_predictions
from multitask_bert.evaluate import dev_scores
from multitask_bert.pipeline import read_test_split
from multitask_bert.report import (
    atomic_write_text,
    errors_markdown,
    qqp_rates,
    write_metrics,
    write_plots,
    write_predictions,
)

logger = logging.getLogger("ensemble")

# the ensemble sets these for each member itself
RESERVED = ("--out", "--resume", "--max-train-minutes")


def build_parser() -> argparse.ArgumentParser:
    """The flags of this driver (the members' flags come after ``--``)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s (--members N [--budget-minutes M] -- RUN FLAGS | --runs DIR ...) "
              "--out DIR")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", type=cli._positive_int,
                      help="train this many runs of the flags after '--', at seeds SEED, "
                      "SEED + 1, ...")
    what.add_argument("--runs", nargs="+", metavar="DIR",
                      help="combine these finished runs (their directories)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="with --members: training minutes shared equally by the members "
                   "(each run's --max-train-minutes)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data-dir", default=None,
                   help="the CS224N CSV files to predict (default: the first member's, i.e. "
                   "the data it was trained and evaluated on)")
    p.add_argument("--device", default="cpu", help="where to run the members' predictions")
    p.add_argument("--resume", action="store_true",
                   help="with --members: keep the members that finished, continue the others "
                   "from their last checkpoint")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--errors-top-k", type=cli._positive_int, default=10,
                   help="mistakes per task in errors.md (default: 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """``(driver flags, member flags)``; the member flags are those after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:split])
    member_flags = argv[split + 1:]
    if args.members is not None:
        if not member_flags:
            parser.error("--members needs the members' flags after '--'")
        taken = [f for f in member_flags if f.split("=")[0] in RESERVED]
        if taken:
            parser.error(f"{', '.join(taken)}: the ensemble sets these for each member")
        if args.budget_minutes is not None and args.budget_minutes <= 0:
            parser.error(f"--budget-minutes must be positive, got {args.budget_minutes}")
    elif member_flags or args.budget_minutes is not None or args.resume:
        parser.error("--runs combines finished runs: it takes no member flags, "
                     "--budget-minutes or --resume")
    return args, member_flags


def train_members(args: argparse.Namespace, flags: list[str]) -> list[Path]:
    """Train (or, with ``--resume``, keep or continue) every member; their directories."""
    base_seed = cli.parse_args([*flags, "--out", str(args.out)]).seed  # also checks them
    outs = []
    for k in range(args.members):
        out = Path(args.out) / f"member-{k}"
        outs.append(out)
        if args.resume and (out / "metrics.json").is_file():
            logger.info("member %d: finished earlier, kept (%s)", k, out)
            continue
        # a flag given twice: argparse keeps the last, so the member's seed wins
        argv = [*flags, "--seed", str(base_seed + k), "--out", str(out)]
        if args.budget_minutes is not None:
            argv += ["--max-train-minutes", str(args.budget_minutes / args.members)]
        if args.resume and (out / "checkpoints").is_dir():
            argv.append("--resume")
        logger.info("member %d of %d: seed %d", k + 1, args.members, base_seed + k)
        cli.main(argv)
    return outs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train or read the members, combine them, write OUT; returns OUT/metrics.json."""
    args, flags = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    dirs = train_members(args, flags) if args.members is not None else args.runs
    members = [Member.read(d) for d in dirs]
    data_dir = args.data_dir or members[0].config["data_dir"]
    tasks = [t for t in ("sst", "qqp", "sts")
             if any(t in m.config["tasks"] for m in members)]
    splits: dict[str, dict[str, Any]] = {"dev": {}, "test": {}}
    missing: list[str] = []
    for t in tasks:
        splits["dev"][t] = read_split(data_dir, t, "dev")
        test = read_test_split(data_dir, t, missing)
        if test is not None:
            splits["test"][t] = test
    preds = ensemble_predictions(members, splits, torch.device(args.device))
    out = Path(args.out)
    for (t, s), p in preds.items():
        write_predictions(out / "predictions" / f"{t}-{s}.csv", p)
    dev = {t: preds[(t, "dev")] for t in tasks}
    train_seconds = sum(m.metrics["train_seconds"] for m in members)
    metrics: dict[str, Any] = {
        "ensemble": True, "best_dev": dev_scores(dev),
        "members": [{"out": str(m.out), "seed": m.config.get("seed"),
                     "tasks": m.config["tasks"], "best_dev": m.metrics["best_dev"],
                     "train_minutes": m.metrics.get("train_minutes")} for m in members],
        "train_seconds": round(train_seconds, 2), "train_minutes": round(train_seconds / 60, 2),
        "qqp_dev_rates": (qqp_rates(dev["qqp"].gold, dev["qqp"].pred) if "qqp" in dev
                          else None),
        "missing_files": missing,
        "plots": [] if args.no_plots else [str(p.relative_to(out))
                                           for p in write_plots(out / "plots", dev)],
        "config": vars(args) | {"member_flags": flags},
    }
    atomic_write_text(out / "errors.md", errors_markdown(dev, splits["dev"], args.errors_top_k))
    write_metrics(out / "metrics.json", metrics)
    logger.info("ensemble of %d: dev %s, %.1f training minutes; wrote %s", len(members),
                {k: round(v, 4) for k, v in metrics["best_dev"].items()},
                train_seconds / 60, out)
    return metrics


if __name__ == "__main__":
    main()
