#!/usr/bin/env python
"""Run several presets under one shared training budget and print a Table-1-style table.

Without a budget flag every run trains for its ``--epochs``; ``--budget-minutes`` shares
training time equally (``--max-train-minutes``); ``--budget-examples N`` gives each run the
optimizer steps that show it about N training examples (``--max-steps``: N / batch size for a
sequential schedule, N / (batch size x tasks) for an interleaved one), which does not depend on
how busy the machine is. A sequential run cut short never reaches its last datasets, though: to
compare the schedules at equal epochs AND equal examples, give every task the same number of
rows (``--max-train-per-task``), so that one epoch of either schedule shows each row once.
Each run writes its own directory under ``--out``. Any flag this driver does not know is passed
to every run (e.g. ``--max-train-per-task 2000 --threads 2``).

``--weightings NAME...`` (or ``--sweep weighting=NAME,...``) also runs every preset with each
weighting of ``mtlkit.weighting`` (``--weighting``: ``mtlkit.MultiTaskOptimizer`` over the
shared encoder); ``all`` means every name of ``mtlkit.weighting.NAMES``. The preset's own row
(the plain sum of the losses, for a preset without a weighting) is the baseline beside them,
and the table's ``weighting`` column says which combined each run. Every run's flags are
checked before the first one starts.

``--jobs N`` trains N runs side by side, one process each (give each its share of the cores
with ``--threads``: on 2 cores, ``--jobs 2 --threads 1``); the table is the same as one run
after another, in the same order.

Examples::

    # the Table 1 ablation, 3 hours of training shared by the rows
    python examples/compare_presets.py --presets baseline ce ce-interleaved \\
        ce-interleaved-clip --budget-minutes 180 --out runs/table1
    # section 5: single-task training of each task against multi-task
    python examples/compare_presets.py --presets ce-interleaved-clip --single-task \\
        --budget-minutes 60 --out runs/single
    # Table 2: learning rate and dropout sweeps of one preset
    python examples/compare_presets.py --presets ce-interleaved-clip --sweep lr=1e-5,5e-5 \\
        --sweep dropout=0.1,0.3 --budget-minutes 120 --out runs/table2
    # every weighting of mtlkit beside the plain sum, at equal steps, two runs at a time
    python examples/compare_presets.py --presets ce-interleaved-clip --weightings all \\
        --epochs 1 --steps-per-epoch 150 --jobs 2 --threads 1 --out runs/weightings
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bert_sst_qqp_sts as cli
import mtlkit
from multitask_bert.presets import PAPER_TABLE1, PRESETS

logger = logging.getLogger("compare_presets")


def plan_runs(presets: list[str], single_task: bool,
              sweeps: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``(run name, extra argv)`` for every run.

    >>> plan_runs(["ce"], True, [])[1]
    ('ce[sst]', ['--preset', 'ce', '--tasks', 'sst'])
    >>> [n for n, _ in plan_runs(["ce"], False, [("lr", ["1e-5", "5e-5"])])]
    ['ce', 'ce lr=1e-5', 'ce lr=5e-5']
    """
    runs: list[tuple[str, list[str]]] = []
    for preset in presets:
        base = ["--preset", preset]
        runs.append((preset, base))
        if single_task:
            runs += [(f"{preset}[{t}]", [*base, "--tasks", t]) for t in ("sst", "qqp", "sts")]
        for flag, values in sweeps:
            runs += [(f"{preset} {flag}={v}", [*base, f"--{flag.replace('_', '-')}", v])
                     for v in values]
    return runs


def steps_for_examples(examples: int, argv: list[str]) -> int:
    """Optimizer steps that show a run about ``examples`` training examples.

    >>> steps_for_examples(4800, ["--preset", "ce-interleaved", "--batch-size", "16"])
    100
    >>> steps_for_examples(4800, ["--preset", "ce", "--tasks", "sst"])
    300
    >>> steps_for_examples(4800, ["--preset", "ce-interleaved", "--task-batch-sizes", "qqp=32"])
    75

    (A sequential schedule with per-task batch sizes gets their mean per step.)
    """
    cfg = cli.parse_args([*argv, "--data-dir", "-"])  # the data are not read here
    sizes = [cfg.batch_size_for(t) for t in cfg.tasks]
    per_step = sum(sizes) if cfg.schedule == "interleaved" else sum(sizes) / len(sizes)
    return max(1, round(examples / per_step))


def weighting_names(values: list[str]) -> list[str]:
    """The weightings a sweep names; ``all`` is every name of ``mtlkit.weighting.NAMES``.

    >>> weighting_names(["sum", "pcgrad"])
    ['sum', 'pcgrad']
    >>> len(weighting_names(["all"])) == len(mtlkit.weighting.NAMES)
    True
    """
    return list(mtlkit.weighting.NAMES) if values == ["all"] else values


def markdown_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Our dev scores, the weighting, steps and training time beside the paper's Table 1
    (BERT-base) numbers.

    >>> r = [("ce", {"best_dev": {"sst": 0.5, "qqp": 0.8, "sts": 0.8, "overall": 0.7},
    ...              "train_minutes": 1.0, "global_steps": 120, "config": {}})]
    >>> markdown_table(r).splitlines()[2].split(" | ")[1:9]  # the cells after the name
    ['plain sum', '0.500', '0.800', '0.800', '0.700', '120', '0.50', '1.0']
    """
    lines = ["| run | weighting | SST acc | QQP acc | STS corr | overall | steps | s/step | "
             "train min | paper SST | paper QQP | paper STS | paper overall |",
             "|---" * 13 + "|"]
    for name, m in results:
        d = m["best_dev"]
        ours = [f"{d[k]:.3f}" if k in d else "-" for k in ("sst", "qqp", "sts", "overall")]
        paper = PAPER_TABLE1.get(name)
        theirs = [f"{v:.3f}" for v in paper] if paper else ["-"] * 4
        steps = m.get("global_steps", 0)
        per_step = f"{60 * m['train_minutes'] / steps:.2f}" if steps else "-"
        weighting = m.get("config", {}).get("weighting") or "plain sum"
        lines.append(f"| {name} | {weighting} | {' | '.join(ours)} | {steps} | {per_step} | "
                     f"{m['train_minutes']:.1f} | {' | '.join(theirs)} |")
    return "\n".join(lines)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def _train(argv: list[str]) -> dict[str, Any]:
    return cli.main(argv)


def train_runs(argvs: list[list[str]], jobs: int) -> list[dict[str, Any]]:
    """Each run's metrics, in the order of ``argvs``: one after another, or ``jobs`` at a time
    in fresh processes (spawned, so that no thread pool or lock of this process is inherited)."""
    if jobs == 1:
        return [_train(argv) for argv in argvs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_configure_logging) as pool:
        return list(pool.map(_train, argvs))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), required=True,
                   help="presets (rows of Table 1) to run")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float,
                        help="training minutes shared equally by all runs")
    budget.add_argument("--budget-examples", type=int,
                        help="training examples per run (sets each run's --max-steps)")
    p.add_argument("--out", default="runs/compare", help="one sub-directory per run")
    p.add_argument("--single-task", action="store_true",
                   help="also train each task alone with every preset (section 5)")
    p.add_argument("--sweep", action="append", default=[], metavar="FLAG=V1,V2",
                   help="also run every preset with each value of a flag (Table 2), e.g. "
                   "lr=1e-5,5e-5 or weighting=sum,pcgrad (weighting=all: every one); "
                   "repeatable")
    p.add_argument("--weightings", nargs="+", default=None, metavar="NAME",
                   help="also run every preset with each of these mtlkit.weighting names "
                   "('all': every one of mtlkit.weighting.NAMES), e.g. pcgrad upgrad mgda")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained side by side, one process each (with --threads: the "
                   "cores each run uses)")
    args, rest = p.parse_known_args(argv)
    _configure_logging()
    if args.jobs < 1:
        p.error(f"--jobs: expected a positive number of processes, got {args.jobs}")
    sweeps = []
    for item in args.sweep:
        flag, _, values = item.partition("=")
        if not flag or not values:
            p.error(f"--sweep takes FLAG=V1,V2, got {item!r}")
        values_list = values.split(",")
        sweeps.append((flag, weighting_names(values_list) if flag == "weighting"
                       else values_list))
    if args.weightings:
        sweeps.append(("weighting", weighting_names(args.weightings)))
    runs = plan_runs(args.presets, args.single_task, sweeps)
    if args.budget_examples is not None and args.budget_examples <= 0:
        p.error(f"--budget-examples must be positive, got {args.budget_examples}")
    for name, extra in runs:  # a typo fails now, not hours into the sweep
        try:
            cli.parse_args([*rest, *extra, "--data-dir", "-"])
        except (ValueError, SystemExit) as e:
            p.error(f"run {name!r}: {e}")
    argvs = []
    for i, (name, extra) in enumerate(runs):
        out = Path(args.out) / f"{i:02d}-{name.replace(' ', '_').replace('=', '-')}"
        if args.budget_minutes is not None:
            minutes = args.budget_minutes / len(runs)
            budget = ["--max-train-minutes", str(minutes)]
            logger.info("run %d/%d: %s (%.1f training minutes) -> %s", i + 1, len(runs), name,
                        minutes, out)
        elif args.budget_examples is None:
            budget = []
            logger.info("run %d/%d: %s (its --epochs) -> %s", i + 1, len(runs), name, out)
        else:
            steps = steps_for_examples(args.budget_examples, [*rest, *extra])
            budget = ["--max-steps", str(steps)]
            logger.info("run %d/%d: %s (%d steps) -> %s", i + 1, len(runs), name, steps, out)
        argvs.append([*rest, *extra, "--out", str(out), *budget])
    results = list(zip([name for name, _ in runs], train_runs(argvs, args.jobs), strict=True))
    table = markdown_table(results)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(table + "\n")
    (Path(args.out) / "results.json").write_text(json.dumps(
        {name: {"best_dev": m["best_dev"], "train_minutes": m["train_minutes"],
                "global_steps": m["global_steps"], "weighting": m["config"]["weighting"],
                "primitives": m["history"][-1]["primitives"] if m["history"] else {}}
         for name, m in results}, indent=2))
    print(table)
    return table


if __name__ == "__main__":
    main()
