"""Per-batch overhead of MultiTaskLoader against iterating the same DataLoaders directly.

Three in-memory tasks (token ids + label, the same row shape for every task so a batch costs the
same whatever its task) with SST/QQP/STS-like size ratios, at batch sizes 16 and 64. For every
mode, one epoch of the MultiTaskLoader is timed next to a direct pass over each task's DataLoader
(``for dl in loaders: for batch in dl``), both as time per batch yielded; the interleaved mode is
also compared with a hand-written cycling loop and with Lightning's
``CombinedLoader(mode="max_size_cycle")`` when ``lightning`` is installed. Contenders alternate
within each repetition; each is reported by its best (least disturbed) pass, and the ratio is
best over best. The last column reruns every contender over lists of ready-made batches, so the
difference to the plain pass is the per-batch cost of the loading machinery alone.

Run: ``PYTHONPATH=src python benchmarks/bench_loader.py [--repeats 7] [--scale 1.0]``.
The last line is ``loader/plain: X.XX``: the interleaved mode's worst ratio over the batch
sizes (target <= 1.02).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterable

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


def plain(loaders: dict[str, DataLoader]) -> Iterable:
    for dl in loaders.values():
        yield from dl


def hand_cycle(loaders: dict[str, DataLoader]) -> Iterable:
    """What one writes by hand for the paper's interleaved training."""
    its = {t: iter(dl) for t, dl in loaders.items()}
    for _ in range(max(len(dl) for dl in loaders.values())):
        step = {}
        for t, dl in loaders.items():
            try:
                step[t] = next(its[t])
            except StopIteration:
                its[t] = iter(dl)
                step[t] = next(its[t])
        yield step


def contenders(loaders: dict[str, DataLoader]) -> dict[str, tuple[Callable[[], Iterable], int]]:
    n_tasks = len(loaders)
    weights = {"weights": {t: 1.0 for t in loaders}}
    out: dict[str, tuple[Callable[[], Iterable], int]] = {
        "plain DataLoaders": (lambda: plain(loaders), 1),
        "hand-written cycle": (lambda: hand_cycle(loaders), n_tasks),
    }
    for mode in MultiTaskLoader.modes:
        mtl = MultiTaskLoader(loaders, mode=mode, seed=0, **(weights if mode == "weighted" else {}))
        out[f"mtlkit {mode}"] = (lambda mtl=mtl: mtl, n_tasks if mode == "interleaved" else 1)
    if CombinedLoader is not None:
        out["lightning max_size_cycle"] = (
            lambda: CombinedLoader(loaders, mode="max_size_cycle"),
            n_tasks,
        )
    return out


def measure(loaders: dict, repeats: int) -> dict[str, float]:
    """Best (least disturbed) seconds per batch of every contender over ``repeats`` passes."""
    runs = contenders(loaders)
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

    print("| batch | contender | µs / batch | ratio to plain | machinery µs / batch |")
    print("|---:|---|---:|---:|---:|")
    worst = 0.0
    for batch in (16, 64):
        loaders = make_loaders(batch, args.scale)
        best = measure(loaders, args.repeats)
        # The same contenders over lists of ready batches: what is left is the machinery alone.
        ready = {t: Ready(list(dl)) for t, dl in loaders.items()}
        bare = measure(ready, args.repeats)
        for name, t in best.items():
            ratio = t / best["plain DataLoaders"]
            extra = 1e6 * (bare[name] - bare["plain DataLoaders"])
            print(f"| {batch} | {name} | {1e6 * t:.1f} | {ratio:.3f} | {extra:+.2f} |")
            if name == "mtlkit interleaved":
                worst = max(worst, ratio)
    if CombinedLoader is None:
        print("\n(lightning not installed: no CombinedLoader row)")
    print(f"loader/plain: {worst:.2f}")


if __name__ == "__main__":
    main()
