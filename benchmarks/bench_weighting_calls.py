"""Per-call time of every Gramian weighting's hot path (``weights(G)``), CPU, one thread.

A benchmark script: the weightings' own cost, without the
per-task backward passes and the Gramian that the optimizer adds around them (for the full
step time see ``benchmarks/bench_weightings.py``). Each weighting is timed on the same random
float32 Gramian of T gradients (the dtype the optimizer passes); times are the median over
``--rounds`` rounds of ``--calls`` calls, rounds interleaving the weightings so that load from
other processes hits them alike.

    PYTHONPATH=src python benchmarks/bench_weighting_calls.py [--tasks 3 10] [--rounds 7]

The last line is ``slowest per call (T=<max T>): <name> <microseconds> us``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtlkit import weighting

GRAMIAN_NAMES = [name for name in weighting.NAMES if weighting.by_name(name).requires_gramian]


def make_gramian(num_tasks: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(num_tasks, 4096, generator=gen)
    jac[1] -= 0.8 * jac[0]  # a conflicting pair, so the projections have work to do
    return jac @ jac.T


def time_calls(method: weighting.Weighting, gramian: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        method.weights(gramian)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[int, dict[str, float]] = {}
    for num_tasks in args.tasks:
        gramian = make_gramian(num_tasks)
        methods = {name: weighting.by_name(name) for name in GRAMIAN_NAMES}
        for method in methods.values():
            method.weights(gramian)  # warm-up (caches, lazy state)
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, method in methods.items():
                samples[name].append(time_calls(method, gramian, args.calls))
        results[num_tasks] = {name: statistics.median(s) for name, s in samples.items()}
    header = "| weighting | " + " | ".join(f"T={t} (us)" for t in args.tasks) + " |"
    print(header)
    print("|" + "---|" * (len(args.tasks) + 1))
    for name in GRAMIAN_NAMES:
        cells = " | ".join(f"{results[t][name]:.0f}" for t in args.tasks)
        print(f"| {name} | {cells} |")
    last = max(args.tasks)
    slowest = max(results[last], key=results[last].get)
    print(f"slowest per call (T={last}): {slowest} {results[last][slowest]:.0f} us")


if __name__ == "__main__":
    main()
