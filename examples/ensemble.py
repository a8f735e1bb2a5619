#!/usr/bin/env python
"""Train an ensemble of runs under one training budget, or combine finished runs.

With ``--members N``, the flags after ``--`` are one run of ``bert_sst_qqp_sts.py`` (the
recipe); it is trained N times, at seeds ``SEED, SEED + 1, ...`` (``--seed`` of the recipe,
default 0), each with ``--budget-minutes / N`` training minutes, into ``OUT/member-K``. Several
recipes, each after its own ``--``, take one count each (``--members 1 4``) and, if budgeted,
one budget each (``--budget-minutes 14 16``): the members need not be alike, e.g. one model of
the pair tasks and four of SST-5 (``--tasks``), whose single models peak early and gain most
from averaging. With ``--runs DIR ...`` the given finished runs are combined as they are.
Either way the members' best checkpoints are run over every dev and test set and, per task,
the outputs of the members trained on it averaged (SST-5 probabilities, QQP logits, STS-B
scores; see ``multitask_bert/ensemble.py``), and OUT gets what a single run writes:
``metrics.json`` (``best_dev`` of the ensemble, the members, and ``train_seconds``, the sum of
theirs: running the members over the dev and test sets is prediction work and is not counted,
as a single run's evaluation is not), ``predictions/``, ``plots/`` and ``errors.md``.

Examples::

    # two members of a recipe at seeds 0 and 1, 15 training minutes each
    python examples/ensemble.py --members 2 --budget-minutes 30 --out runs/ens -- \\
        --preset ce-mixture-clip --bf16 --pooling mean --lr 8e-5 --lr-schedule linear
    # one model of Quora and STS-B, and three of SST-5 at seeds 0, 1, 2
    python examples/ensemble.py --members 1 3 --out runs/uneven -- \\
        --preset ce-mixture-clip --tasks qqp,sts --epochs 2 -- \\
        --preset ce-mixture-clip --tasks sst --epochs 2
    # combine two finished runs
    python examples/ensemble.py --runs runs/G runs/I --out runs/G+I
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
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


@dataclass
class Recipe:
    """One recipe of an ensemble: the flags of its runs, how many, and their shared budget."""

    flags: list[str]
    members: int
    budget_minutes: float | None = None


def build_parser() -> argparse.ArgumentParser:
    """The flags of this driver (the members' flags come after ``--``)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s (--members N [N ...] [--budget-minutes M [M ...]] -- RUN FLAGS "
              "[-- RUN FLAGS ...] | --runs DIR ...) --out DIR")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", type=cli._positive_int, nargs="+", metavar="N",
                      help="train this many runs of the flags after '--', at seeds SEED, "
                      "SEED + 1, ...; one count per recipe when several recipes follow, "
                      "each after its own '--'")
    what.add_argument("--runs", nargs="+", metavar="DIR",
                      help="combine these finished runs (their directories)")
    p.add_argument("--budget-minutes", type=float, nargs="+", default=None, metavar="M",
                   help="with --members: training minutes shared equally by a recipe's "
                   "members (each run's --max-train-minutes); one per recipe")
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


def _split_on_dashes(argv: list[str]) -> list[list[str]]:
    """``argv`` cut at every ``--``: the driver's flags, then one list per recipe."""
    parts: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--":
            parts.append([])
        else:
            parts[-1].append(arg)
    return parts


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[Recipe]]:
    """``(driver flags, recipes)``; each recipe's flags are those after one ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, *recipe_flags = _split_on_dashes(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if args.runs is not None:
        if recipe_flags or args.budget_minutes is not None or args.resume:
            parser.error("--runs combines finished runs: it takes no member flags, "
                         "--budget-minutes or --resume")
        return args, []
    if not recipe_flags or not all(recipe_flags):
        parser.error("--members needs the members' flags after '--' (one '--' per recipe)")
    if len(args.members) != len(recipe_flags):
        parser.error(f"--members gives {len(args.members)} count(s) for "
                     f"{len(recipe_flags)} recipe(s) after '--': give one per recipe")
    budgets = args.budget_minutes or [None] * len(recipe_flags)
    if len(budgets) != len(recipe_flags):
        parser.error(f"--budget-minutes gives {len(budgets)} budget(s) for "
                     f"{len(recipe_flags)} recipe(s): give one per recipe")
    if any(b is not None and b <= 0 for b in budgets):
        parser.error(f"--budget-minutes must be positive, got {args.budget_minutes}")
    for flags in recipe_flags:
        taken = [f for f in flags if f.split("=")[0] in RESERVED]
        if taken:
            parser.error(f"{', '.join(taken)}: the ensemble sets these for each member")
    return args, [Recipe(f, n, b)
                  for f, n, b in zip(recipe_flags, args.members, budgets, strict=True)]


def train_members(args: argparse.Namespace, recipes: list[Recipe]) -> list[Path]:
    """Train (or, with ``--resume``, keep or continue) every member of every recipe; their
    directories, ``OUT/member-0``, ``OUT/member-1``, ... in recipe order."""
    # parsing every recipe first checks them all before the first member trains
    base_seeds = [cli.parse_args([*r.flags, "--out", str(args.out)]).seed for r in recipes]
    jobs = [(r, seed + k)
            for r, seed in zip(recipes, base_seeds, strict=True) for k in range(r.members)]
    outs = []
    for index, (recipe, seed) in enumerate(jobs):
        out = Path(args.out) / f"member-{index}"
        outs.append(out)
        if args.resume and (out / "metrics.json").is_file():
            logger.info("member %d: finished earlier, kept (%s)", index, out)
            continue
        # a flag given twice: argparse keeps the last, so the member's seed wins
        argv = [*recipe.flags, "--seed", str(seed), "--out", str(out)]
        if recipe.budget_minutes is not None:
            argv += ["--max-train-minutes", str(recipe.budget_minutes / recipe.members)]
        if args.resume and (out / "checkpoints").is_dir():
            argv.append("--resume")
        logger.info("member %d of %d: seed %d", index + 1, len(jobs), seed)
        cli.main(argv)
    return outs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train or read the members, combine them, write OUT; returns OUT/metrics.json."""
    args, recipes = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    dirs = train_members(args, recipes) if args.members is not None else args.runs
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
        "config": vars(args) | {"recipes": [asdict(r) for r in recipes]},
    }
    atomic_write_text(out / "errors.md", errors_markdown(dev, splits["dev"], args.errors_top_k))
    write_metrics(out / "metrics.json", metrics)
    logger.info("ensemble of %d: dev %s, %.1f training minutes; wrote %s", len(members),
                {k: round(v, 4) for k, v in metrics["best_dev"].items()},
                train_seconds / 60, out)
    return metrics


if __name__ == "__main__":
    main()
