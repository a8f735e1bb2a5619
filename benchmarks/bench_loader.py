"""Per-batch overhead of MultiTaskLoader against iterating the same DataLoaders directly.

Three in-memory tasks (token ids + label, the same row shape for every task so a batch costs the
same whatever its task) with SST/QQP/STS-like size ratios, at batch sizes 16 and 64, every time
per batch yielded. Each mode's epoch is timed next to

* the plain pass: each DataLoader iterated directly, one after the other;
* the direct loop in the same task order: the same DataLoaders iterated directly (``next`` on
  their iterators, a new iterator when one runs out) in exactly the task order the mode produces.
  Interleaving tasks costs a little by itself (three datasets touched in turn instead of one),
  so this is the like-for-like baseline: the ratio is the loader's own overhead.

and Lightning's ``CombinedLoader(mode="max_size_cycle")`` (where ``lightning`` is installed)
against the interleaved order. Contenders alternate within each repetition; each is reported by
its best (least disturbed) pass. The last column reruns everything over lists of ready-made
batches, so what remains over the direct loop is the per-batch cost of the machinery alone.

Run: ``PYTHONPATH=src python benchmarks/bench_loader.py [--repeats 7] [--scale 1.0]``.
The last line is ``loader/plain: X.XX``: the interleaved mode against the direct loop over the
same DataLoaders in the same order, the worst over the batch sizes (target <= 1.02).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

from mtlkit import MultiTaskLoader

warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning vs torch pytree

try:  # optional competitor
    from lightning.pytorch.utilities import CombinedLoader
except ImportError:  # pragma: no cover - depends on the environment
    CombinedLoader = None

SEQ_LEN = 64
BATCHES = {"sst": 250, "qqp": 1000, "sts": 150}  # batches per task at every batch size


def make_loaders(batch: int, scale: float) -> dict[str, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, n in BATCHES.items():
        rows = max(1, int(n * scale)) * batch
        ds = TensorDataset(
            torch.randint(0, 30_000, (rows, SEQ_LEN), generator=gen),
            torch.randint(0, 5, (rows,), generator=gen),
        )
        out[name] = DataLoader(ds, batch_size=batch, shuffle=True)
    return out


class Ready:
    """Batches already in memory, as a loader (not a list: Lightning would flatten a list)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def time_per_batch(make_iter: Callable[[], Iterable], per_step: int) -> float:
    """Seconds per batch for one full pass of ``make_iter()``."""
    start = time.perf_counter()
    steps = 0
    for _ in make_iter():
        steps += 1
    return (time.perf_counter() - start) / (steps * per_step)


def plain(loaders: dict) -> Iterable:
    for dl in loaders.values():
        yield from dl


def direct(loaders: dict, order: list[str]) -> Iterable:
    """The DataLoaders iterated directly in ``order``, restarted when they run out."""
    its: dict[str, Iterator | None] = dict.fromkeys(loaders)
    for t in order:
        it = its[t]
        if it is not None:
            try:
                yield next(it)
                continue
            except StopIteration:
                pass
        its[t] = it = iter(loaders[t])
        yield next(it)


def make_mtl(loaders: dict, mode: str) -> MultiTaskLoader:
    weights = {t: 1.0 for t in loaders} if mode == "weighted" else None
    return MultiTaskLoader(loaders, mode=mode, seed=0, weights=weights)


def task_order(loaders: dict, mode: str) -> list[str]:
    """The task of every batch of one epoch of ``mode`` (it depends on the lengths alone)."""
    tokens = {t: Ready([None] * len(dl)) for t, dl in loaders.items()}
    steps = make_mtl(tokens, mode)
    if mode == "interleaved":
        return [t for step in steps for t in step]
    return [t for t, _ in steps]


Run = tuple[Callable[[], Iterable], int]


def contenders(loaders: dict) -> tuple[dict[str, Run], dict[str, str]]:
    """Named runs (factory, batches per step) and each one's like-for-like direct baseline."""
    n_tasks = len(loaders)
    runs: dict[str, Run] = {"plain pass": (lambda: plain(loaders), 1)}
    baseline = {"plain pass": "plain pass"}
    for mode in MultiTaskLoader.modes:
        order = task_order(loaders, mode)
        runs[f"direct, {mode} order"] = (lambda order=order: direct(loaders, order), 1)
        mtl = make_mtl(loaders, mode)
        runs[f"mtlkit {mode}"] = (lambda mtl=mtl: mtl, n_tasks if mode == "interleaved" else 1)
        baseline[f"direct, {mode} order"] = f"direct, {mode} order"
        baseline[f"mtlkit {mode}"] = f"direct, {mode} order"
    if CombinedLoader is not None:
        runs["lightning max_size_cycle"] = (
            lambda: CombinedLoader(loaders, mode="max_size_cycle"),
            n_tasks,
        )
        baseline["lightning max_size_cycle"] = "direct, interleaved order"
    return runs, baseline


def measure(runs: dict[str, Run], repeats: int) -> dict[str, float]:
    """Best (least disturbed) seconds per batch of every run over ``repeats`` passes."""
    best = {name: float("inf") for name in runs}
    for make_iter, per_step in runs.values():  # warm-up
        time_per_batch(make_iter, per_step)
    for r in range(repeats):
        names = list(runs)
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            make_iter, per_step = runs[name]
            best[name] = min(best[name], time_per_batch(make_iter, per_step))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the batch counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    print(
        "| batch | contender | µs / batch | vs plain pass | vs direct, same order "
        "| machinery µs / batch |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    worst = 0.0
    for batch in (16, 64):
        loaders = make_loaders(batch, args.scale)
        runs, baseline = contenders(loaders)
        best = measure(runs, args.repeats)
        # The same runs over lists of ready batches: what is left is the machinery alone.
        bare = measure(
            contenders({t: Ready(list(dl)) for t, dl in loaders.items()})[0], args.repeats
        )
        for name, t in best.items():
            base = baseline[name]
            ratio = t / best[base]
            extra = 1e6 * (bare[name] - bare[base])
            print(
                f"| {batch} | {name} | {1e6 * t:.1f} | {t / best['plain pass']:.3f} "
                f"| {ratio:.3f} | {extra:+.2f} |"
            )
            if name == "mtlkit interleaved":
                worst = max(worst, ratio)
    if CombinedLoader is None:
        print("\n(lightning not installed: no CombinedLoader row)")
    print(f"loader/plain: {worst:.2f}")


if __name__ == "__main__":
    main()
