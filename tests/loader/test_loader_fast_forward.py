"""Mid-epoch resume without loading the skipped batches, and the loading of older states."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mtlkit import MultiTaskLoader

WORKER_TIMEOUT = 60  # seconds a DataLoader waits for a worker's batch before failing the test


class SharedReads(Dataset):
    """Items ``k``; counts every ``__getitem__`` per index in shared memory (seen by workers)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = multiprocessing.get_context("fork").Array("i", n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        with self.reads.get_lock():
            self.reads[k] += 1
        return k


def plain(step):
    return {k: v.tolist() for k, v in step.items()} if isinstance(step, dict) else (
        step[0], step[1].tolist())


def test_worker_loader_resume_loads_no_skipped_sample():
    def make(ds):
        dl = DataLoader(ds, batch_size=2, shuffle=True, num_workers=1, timeout=WORKER_TIMEOUT,
                        multiprocessing_context="fork")
        return MultiTaskLoader({"a": dl}, seed=3)

    full = [plain(s) for s in make(SharedReads(20))]
    first = make(SharedReads(20))
    it = iter(first)
    head = [plain(next(it)) for _ in range(6)]
    state = first.state_dict()
    del it
    ds = SharedReads(20)
    resumed = make(ds)
    resumed.load_state_dict(state)
    rest = [plain(s) for s in resumed]
    assert head + rest == full
    skipped = {k for step in head for k in step["a"]}
    remaining = {k for step in rest for k in step["a"]}
    assert [ds.reads[k] for k in sorted(skipped)] == [0] * 12  # never loaded
    assert [ds.reads[k] for k in sorted(remaining)] == [1] * 8


class GlobalRandomBatches(Sampler[list[int]]):
    """Draws its order from torch's global RNG when ``iter()`` is called (eagerly)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __iter__(self):
        perm = torch.randperm(self.n).tolist()
        return iter([perm[i : i + self.size] for i in range(0, self.n, self.size)])

    def __len__(self) -> int:
        return -(-self.n // self.size)


@pytest.mark.parametrize("workers", [0, 1])
def test_fast_forward_keeps_the_order_of_the_samplers_random_draws(workers):
    """A DataLoader calls ``iter(batch_sampler)`` before drawing its base seed (and, with
    workers, once more after): the sampler-level skip must keep that order."""

    def make():
        kw = {"timeout": WORKER_TIMEOUT, "multiprocessing_context": "fork"} if workers else {}
        dl = DataLoader(range(12), batch_sampler=GlobalRandomBatches(12, 2), num_workers=workers,
                        **kw)
        return MultiTaskLoader({"a": dl, "b": [0, 1]}, mode="round_robin", seed=1)

    full = [plain(s) if s[0] == "a" else s for s in make()]
    for stop in (3, 7):
        first = make()
        it = iter(first)
        head = [plain(s) if s[0] == "a" else s for s in (next(it) for _ in range(stop))]
        resumed = make()
        resumed.load_state_dict(first.state_dict())
        assert head + [plain(s) if s[0] == "a" else s for s in resumed] == full


class Counting(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        self.reads += 1
        return k


class OwnLoader(DataLoader):
    """A DataLoader subclass: the loader cannot know how to copy it, so it reads and drops."""


def test_dataloader_subclass_is_fast_forwarded_by_reading():
    def make(ds):
        return MultiTaskLoader({"a": OwnLoader(ds, batch_size=2, shuffle=True)}, seed=2)

    full = [plain(s) for s in make(Counting(10))]
    first = make(Counting(10))
    it = iter(first)
    head = [plain(next(it)) for _ in range(3)]
    ds = Counting(10)
    resumed = make(ds)
    resumed.load_state_dict(first.state_dict())
    assert head + [plain(s) for s in resumed] == full
    assert ds.reads == 10  # the 3 skipped batches were read, then the 2 remaining ones


# -- older states ----------------------------------------------------------------------------
# Written by the MultiTaskLoader of mtlkit 0.1.0 (commit 0189c80, state_dict version 1) for
# MultiTaskLoader(v1_loaders(), mode="interleaved", seed=1, steps_per_epoch=23) after epochs
# 0-2 and two steps of epoch 3.
V1_STATE = {
    "version": 1, "mode": "interleaved", "tasks": ["a", "b", "c"], "seed": 1, "steps": 23,
    "epoch": 3, "step": 2, "task": 0, "schedule": None,
    "loaders": {t: {"cycle": 0, "consumed": 2, "state": None} for t in "abc"},
}


def v1_loaders() -> dict[str, DataLoader]:
    return {
        n: DataLoader(list(range(1000 * t, 1000 * t + 2 * s)), batch_size=2, shuffle=True)
        for t, (n, s) in enumerate(zip("abc", [7, 2, 4], strict=True))
    }


def test_version_1_state_loads_and_resumes():
    fresh = MultiTaskLoader(v1_loaders(), seed=1, steps_per_epoch=23)
    fresh.set_epoch(3)
    full = [plain(s) for s in fresh]
    resumed = MultiTaskLoader(v1_loaders(), seed=1, steps_per_epoch=23)
    resumed.load_state_dict(V1_STATE)
    upgraded = resumed.state_dict()
    assert (upgraded["version"], upgraded["carry_over"]) == (2, False)
    assert [plain(s) for s in resumed] == full[2:]
    assert resumed.epoch == 4


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 7}, r"state_dict\['version'\]: expected 1 or 2 .*got 7"),
        ({"step": 24}, r"state_dict\['step'\]: expected at most 23, got 24"),
        ({"epoch": -1}, r"state_dict\['epoch'\]: expected an int >= 0, got -1"),
        ({"loaders": {t: {"cycle": 0, "consumed": -2} for t in "abc"}},
         r"state_dict\['loaders'\]\['a'\]\['consumed'\]: expected an int >= 0, got -2"),
        ({"loaders": {"a": {"cycle": 0, "consumed": 0}}}, r"state_dict\['loaders'\]: expected"),
    ],
)
def test_damaged_state_is_rejected_with_the_key_named(change, match):
    loader = MultiTaskLoader(v1_loaders(), seed=1, steps_per_epoch=23)
    with pytest.raises(ValueError, match=match):
        loader.load_state_dict({**V1_STATE, **change})


def test_version_1_state_does_not_load_into_a_carry_over_loader():
    loader = MultiTaskLoader(v1_loaders(), seed=1, steps_per_epoch=23, carry_over=True)
    with pytest.raises(ValueError, match=r"state_dict\['carry_over'\]: expected True .*got False"):
        loader.load_state_dict(V1_STATE)
