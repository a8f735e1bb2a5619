"""Every weighting's step time and peak memory over the plain summed step, beside torchjd's.

The model, batches and layouts are ``bench_pcgrad.py``'s: a random BERT (hidden 256, 4 layers),
three heads, batch 16 per task, sequence 64, Adam, CPU, 2 threads; layout S runs a separate
forward per task, layout C one forward over the concatenated batch. In C, mtlkit runs inside
``MultiTaskOptimizer.stacked`` (one backward, split by the tasks' rows); ``--layouts C-tasks``
measures C with a backward per task instead (mtlkit without ``stacked``). Every weighting of
``mtlkit.weighting`` is measured (its ``NAMES``, built by ``by_name``), through
``mtlkit.MultiTaskOptimizer`` with the encoder as shared parameters, and beside it torchjd's
aggregator of the same method (``mtl_backward`` then
``jac_to_grad``) where torchjd has one. Each weighting is timed in rounds that run the plain
step, mtlkit's and torchjd's once each, in a rotating order; a ratio is the median over rounds
of the two times of the same round, so that load from other processes hits both alike. Step
times are medians; memory is the peak RSS growth (VmHWM) of a fresh process per method.

    python benchmarks/bench_weightings.py [--steps 10] [--warmup 2] [--only pcgrad,mgda]
                                          [--layouts S,C,C-tasks] [--no-memory] [--threads 2]
                                          [--tasks 3]

``--tasks N`` runs N tasks (heads of the three kinds in turn) to see how the costs grow with T;
the targets are stated for the default three. Targets: every Gramian weighting at most 1.15x
plain in S, every loss-based one at most 1.03x, each at least 3x faster than torchjd's same
method. The last line is ``weightings/plain (S) max: X.XX``, the slowest Gramian weighting in
layout S.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import bench_pcgrad
from bench_pcgrad import (
    BATCH,
    THREADS,
    _status_kib,
    features_concatenated,
    features_separate,
    losses_from,
    make_batches,
    make_model,
)

GRAMIAN_TARGET, LOSS_TARGET, TORCHJD_TARGET = 1.15, 1.03, 3.0
LAYOUTS = ("S", "C", "C-tasks")


def discover() -> dict[str, object]:
    """Every weighting of mtlkit.weighting, by lower-case name, built with its defaults (the loss
    weightings with the number of tasks: uncertainty needs it to own its log-variances)."""
    from mtlkit import weighting as w

    found = {}
    for name in w.NAMES:
        built = w.by_name(name)
        found[name] = (w.by_name(name, num_tasks=len(bench_pcgrad.TASKS))
                       if isinstance(built, w.LossWeighting) else built)
    return found


def torchjd_aggregator(name: str, weighting: object):
    """torchjd's aggregator of the same method at the mtlkit instance's settings, or None."""
    try:
        import torchjd.aggregation as jd
    except Exception as exc:  # the reason is printed, not hidden
        print(f"torchjd not importable: {exc}")
        return None
    makers: dict[str, Callable[[], object]] = {
        "pcgrad": jd.PCGrad, "upgrad": jd.UPGrad, "dualproj": jd.DualProj, "mgda": jd.MGDA,
        "cagrad": lambda: jd.CAGrad(c=getattr(weighting, "c", 0.5)), "imtlg": jd.IMTLG,
        "aligned_mtl": jd.AlignedMTL, "config": jd.ConFIG,
        "fairgrad": lambda: jd.FairGrad(alpha=getattr(weighting, "alpha", 1.0)),
        "nash_mtl": lambda: jd.NashMTL(n_tasks=len(bench_pcgrad.TASKS)),
        "gradvac": lambda: jd.GradVac(beta=getattr(weighting, "beta", 0.5)),
        "mean": jd.Mean, "sum": jd.Sum, "random": jd.Random,
    }
    return makers[name]() if name in makers else None


def _features(encoder, batches, layout: str):
    """The features per task, and the tensors torchjd's ``mtl_backward`` takes as features."""
    if layout == "S":
        feats = features_separate(encoder, batches)
        return feats, [feats[t] for t in bench_pcgrad.TASKS]
    feats, cls = features_concatenated(encoder, batches)
    return feats, [cls]


def build(method: str, name: str, layout: str) -> Callable[[dict], None]:
    """One training step of ``method`` (plain, mtlkit, torchjd) with weighting ``name``."""
    import copy

    from mtlkit import MultiTaskOptimizer

    encoder, heads = make_model()
    params = [*encoder.parameters(), *heads.parameters()]
    weighting = copy.deepcopy(discover()[name]) if name else None
    if method == "mtlkit":
        extra = list(weighting.parameters()) if isinstance(weighting, torch.nn.Module) else []
        gramian = weighting.requires_gramian
        opt = MultiTaskOptimizer(torch.optim.Adam([*params, *extra], lr=1e-4), weighting,
                                 shared_params=list(encoder.parameters()) if gramian else None)

        rows = {t: BATCH for t in bench_pcgrad.TASKS}

        def step(batches):
            opt.zero_grad()
            if layout == "C":  # one backward for all tasks, split by the tasks' rows
                with opt.stacked(encoder, rows):
                    feats, _ = _features(encoder, batches, layout)
                    opt.backward(losses_from(feats, heads, batches))
            else:
                feats, _ = _features(encoder, batches, layout)
                opt.backward(losses_from(feats, heads, batches))
            opt.step()
        return step

    adam = torch.optim.Adam(params, lr=1e-4)
    if method == "plain":
        def step(batches):
            adam.zero_grad()
            feats, _ = _features(encoder, batches, layout)
            sum(losses_from(feats, heads, batches).values()).backward()
            adam.step()
        return step

    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = torchjd_aggregator(name, weighting)
    shared = list(encoder.parameters())

    def step(batches):
        adam.zero_grad()
        feats, features = _features(encoder, batches, layout)
        losses = losses_from(feats, heads, batches)
        mtl_backward([losses[t] for t in bench_pcgrad.TASKS], features=features,
                     shared_params=shared)
        jac_to_grad(shared, aggregator)
        adam.step()
    return step


def time_group(methods: list[str], name: str, layout: str, steps: int,
               warmup: int) -> dict[str, list[float]]:
    """Each method's step times, one per round; every round runs each method once, in a
    rotating order, so that a method's time and the plain one of the same round share the
    machine's load."""
    fns = {m: build(m, name if m != "plain" else "", layout) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(warmup + steps):
        batches = make_batches(r)
        for m in methods[r % len(methods):] + methods[: r % len(methods)]:
            start = time.perf_counter()
            fns[m](batches)
            if r >= warmup:
                times[m].append(time.perf_counter() - start)
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s time over ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def peak_memory_child(method: str, name: str, layout: str, steps: int) -> None:
    step = build(method, name, layout)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM to the current RSS, once the model is built
    before = _status_kib("VmRSS")
    for r in range(steps):
        step(make_batches(r))
    print(json.dumps({"peak_growth_mb": (_status_kib("VmHWM") - before) / 1024}))


def peak_memory(method: str, name: str, layout: str, steps: int = 3) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", method, name or "-",
                          layout, str(steps), "--threads", str(torch.get_num_threads()),
                          "--tasks", str(len(bench_pcgrad.TASKS))],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]


def measure(name: str, weighting, layout: str, args) -> dict[str, float | None]:
    has_jd = torchjd_aggregator(name, weighting) is not None
    methods = ["plain", "mtlkit", *(["torchjd"] if has_jd else [])]
    times = time_group(methods, name, layout, args.steps, args.warmup)
    med = {m: statistics.median(v) for m, v in times.items()}
    row: dict[str, float | None] = {
        "plain_ms": med["plain"] * 1e3, "mtlkit_ms": med["mtlkit"] * 1e3,
        "ratio": paired(times, "mtlkit", "plain"),
        "torchjd_ms": med["torchjd"] * 1e3 if has_jd else None,
        "torchjd_ratio": paired(times, "torchjd", "plain") if has_jd else None,
        "speedup": paired(times, "torchjd", "mtlkit") if has_jd else None,
    }
    if not args.no_memory:
        row["plain_mb"] = peak_memory("plain", "", layout)
        row["mtlkit_mb"] = peak_memory("mtlkit", name, layout)
        row["torchjd_mb"] = peak_memory("torchjd", name, layout) if has_jd else None
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


HEADER = ("| layout | weighting | kind | plain ms | mtlkit ms | x plain | torchjd ms | x plain "
          "| torchjd / mtlkit | plain MiB | mtlkit MiB | torchjd MiB |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def row_line(layout: str, name: str, kind: str, r: dict) -> str:
    return (f"| {layout} | {name} | {kind} | {r['plain_ms']:.1f} | {r['mtlkit_ms']:.1f}"
            f" | {r['ratio']:.2f} | {_fmt(r['torchjd_ms'], '.1f')} | "
            f"{_fmt(r['torchjd_ratio'], '.2f')} | {_fmt(r['speedup'], '.1f')} | "
            f"{_fmt(r.get('plain_mb'), '.0f')} | {_fmt(r.get('mtlkit_mb'), '.0f')} | "
            f"{_fmt(r.get('torchjd_mb'), '.0f')} |")


def misses_of(rows: dict[tuple[str, str], dict], kinds: dict[str, str]) -> list[str]:
    misses = []
    for (layout, name), r in rows.items():
        target = GRAMIAN_TARGET if kinds[name] == "gramian" else LOSS_TARGET
        if layout == "S" and r["ratio"] > target:
            misses.append(f"{name} {r['ratio']:.2f}x plain in S (target {target})")
        if r["speedup"] is not None and r["speedup"] < TORCHJD_TARGET:
            misses.append(f"{name} ({layout}) only {r['speedup']:.1f}x faster than torchjd")
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--only", default="", help="comma-separated weighting names")
    parser.add_argument("--layouts", default="S,C",
                        help="comma-separated: S, C, C-tasks")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (1 gives steadier ratios on a loaded machine)")
    parser.add_argument("--tasks", type=int, default=len(bench_pcgrad.TASKS),
                        help="number of tasks (the kinds cycle: sst, qqp, sts, sst_2, ...)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tasks < 1:
        parser.error(f"--tasks: expected a number of tasks >= 1, got {args.tasks}")
    bench_pcgrad.use_tasks(args.tasks)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        method, name, layout, steps = args.memory_child
        peak_memory_child(method, "" if name == "-" else name, layout, int(steps))
        return
    layouts = args.layouts.split(",")
    if any(lay not in LAYOUTS for lay in layouts):
        parser.error(f"--layouts: expected names from {', '.join(LAYOUTS)}, got {args.layouts!r}")
    found = discover()
    names = [n for n in found if not args.only or n in args.only.split(",")]
    kinds = {n: "gramian" if found[n].requires_gramian else "loss" for n in names}
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(bench_pcgrad.TASKS)} tasks; weightings: "
          f"{', '.join(names)}\n")
    print(HEADER, flush=True)
    rows = {}
    for layout in layouts:
        for n in names:
            rows[(layout, n)] = measure(n, found[n], layout, args)
            print(row_line(layout, n, kinds[n], rows[(layout, n)]), flush=True)
    misses = misses_of(rows, kinds)
    print()
    print("targets met" if not misses else "targets missed: " + "; ".join(misses))
    gramian_s = [r["ratio"] for (layout, n), r in rows.items()
                 if layout == "S" and kinds[n] == "gramian"]
    print(f"weightings/plain (S) max: {max(gramian_s) if gramian_s else float('nan'):.2f}")


if __name__ == "__main__":
    main()
