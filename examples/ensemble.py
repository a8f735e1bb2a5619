"""Train an ensemble of custom recipes under one training budget, or combine finished runs.

The best recipe is an ensemble already: ``python examples/bert_sst_qqp_sts.py --preset best``
trains and combines it. This driver is for other ensembles. With ``--members N``, the flags
after ``--`` are one run of ``bert_sst_qqp_sts.py`` (the recipe); it is trained N times, at
seeds ``SEED, SEED + 1, ...`` (``--seed`` of the recipe, default 0), each with
``--budget-minutes / N`` training minutes if a budget is given, into ``OUT/member-K``. Several
recipes, each after its own ``--``, take one count each (``--members 1 4``) and, if budgeted,
one budget each (``--budget-minutes 14 16``). With ``--runs DIR ...`` the given finished runs
are combined as they are. Either way the members' best checkpoints are run over every dev and
test set and, per task, the outputs of the members trained on it averaged (SST-5
probabilities, QQP logits, STS-B scores; see ``multitask_bert/ensemble.py``), and OUT gets
what a single run writes: ``metrics.json`` (``best_dev`` of the ensemble, the members, and
``train_seconds``, the sum of theirs), ``predictions/``, ``plots/`` and ``errors.md``.

Examples::

    # two members of a recipe at seeds 0 and 1
    python examples/ensemble.py --members 2 --out runs/ens -- \\
        --preset ce-mixture-clip --pooling mean --lr 8e-5 --lr-schedule linear --epochs 2
    # one model of Quora and STS-B, and three of SST-5 at seeds 0, 1, 2
    python examples/ensemble.py --members 1 3 --out runs/uneven -- \\
        --preset ce-mixture-clip --tasks qqp,sts --epochs 2 -- \\
        --preset ce-mixture-clip --tasks sst --epochs 2
    # combine two finished runs
    python examples/ensemble.py --runs runs/G runs/I --out runs/G+I
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bert_sst_qqp_sts as cli
from multitask_bert.config import RunConfig
from multitask_bert.ensemble import combine, train_members

logger = logging.getLogger("ensemble")

# the ensemble sets these for each member itself
RESERVED = ("--out", "--resume", "--max-train-minutes")


@dataclass
class Recipe:
    """One recipe of an ensemble: the flags of its runs, how many, and their shared budget."""

    flags: list[str]
    members: int
    budget_minutes: float | None = None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The flags of this driver (the members' flags come after ``--``)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s (--members N [N ...] [--budget-minutes M [M ...]] -- RUN FLAGS "
              "[-- RUN FLAGS ...] | --runs DIR ...) --out DIR")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", type=_positive_int, nargs="+", metavar="N",
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
    p.add_argument("--errors-top-k", type=_positive_int, default=10,
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


def member_configs(args: argparse.Namespace, recipes: list[Recipe]) -> list[RunConfig]:
    """Every member's :class:`RunConfig`, ``OUT/member-0``, ``OUT/member-1``, ... in recipe
    order (each recipe is parsed, and so checked, before the first member trains)."""
    configs: list[RunConfig] = []
    for recipe in recipes:
        base = cli.parse_args([*recipe.flags, "--out", str(args.out)])
        for k in range(recipe.members):
            cap = None if recipe.budget_minutes is None else recipe.budget_minutes / recipe.members
            configs.append(dataclasses.replace(
                base, seed=base.seed + k, out=str(Path(args.out) / f"member-{len(configs)}"),
                max_train_minutes=cap))
    return configs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train or read the members, combine them, write OUT; returns OUT/metrics.json."""
    args, recipes = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.members is not None:
        dirs = train_members(member_configs(args, recipes), args.resume)
    else:
        dirs = args.runs
    config = vars(args) | {"recipes": [dataclasses.asdict(r) for r in recipes]}
    return combine(dirs, args.out, data_dir=args.data_dir, device=args.device,
                   plots=not args.no_plots, errors_top_k=args.errors_top_k, config=config)


if __name__ == "__main__":
    main()
