"""MultiTaskLoader resume: a run stopped mid-epoch and resumed equals the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # pragma: no cover - torchdata is in the test extra
    StatefulDataLoader = None

from mtlkit import MultiTaskLoader

NAMES = "abcd"
needs_torchdata = pytest.mark.skipif(StatefulDataLoader is None, reason="torchdata not installed")
KINDS = ["dataloader", pytest.param("stateful", marks=needs_torchdata)]


class Counting(Dataset):
    """Items ``offset + k``; counts ``__getitem__`` calls."""

    def __init__(self, n: int, offset: int) -> None:
        self.n, self.offset, self.reads = n, offset, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        self.reads += 1
        return self.offset + k


def make_loaders(sizes, kind="dataloader", batch_size=1, workers=0):
    torch.manual_seed(int(torch.randint(0, 2**30, ())))  # no shared global seed between builds
    out = {}
    for t, n in enumerate(sizes):
        ds = Counting(n * batch_size, 1000 * t)
        cls = StatefulDataLoader if kind == "stateful" else DataLoader
        out[NAMES[t]] = cls(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                            timeout=60 if workers else 0)  # a hung worker fails the test
    return out


def make(mode, sizes, kind="dataloader", seed=0, **kw):
    if mode == "weighted":
        kw["weights"] = {NAMES[t]: t + 1.0 for t in range(len(sizes))}
    return MultiTaskLoader(
        make_loaders(sizes, kind, kw.pop("batch_size", 1), kw.pop("workers", 0)),
        mode=mode,
        seed=seed,
        **kw,
    )


def plain(step):
    """A step as plain Python (tensors to lists) for equality."""
    if isinstance(step, dict):
        return {k: v.tolist() for k, v in step.items()}
    return (step[0], step[1].tolist())


def check_resume(mode, sizes, stop, kind, seed=0, epoch=0, json_roundtrip=False, **kw):
    full_loader = make(mode, sizes, kind, seed, **kw)
    full_loader.set_epoch(epoch)
    full = [plain(s) for s in full_loader]
    first = make(mode, sizes, kind, seed, **kw)
    first.set_epoch(epoch)
    it = iter(first)
    head = [plain(next(it)) for _ in range(min(stop, len(full)))]
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (epoch, len(head))
    if json_roundtrip:
        state = json.loads(json.dumps(state))
    resumed = make(mode, sizes, kind, seed, **kw)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    rest = [plain(s) for s in resumed]
    assert head + rest == full
    assert resumed.epoch == epoch + 1
    return resumed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MultiTaskLoader.modes)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data())
@settings(max_examples=8, deadline=None)
def test_resume_mid_epoch_equals_uninterrupted(kind, mode, sizes, data):
    total = {"interleaved": max(sizes), "round_robin": len(sizes) * max(sizes)}.get(
        mode, sum(sizes)
    )
    stop = data.draw(st.integers(0, total), label="stop")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    epoch = data.draw(st.integers(0, 3), label="epoch")
    check_resume(
        mode, sizes, stop, kind, seed=seed, epoch=epoch, json_roundtrip=kind == "dataloader"
    )


@pytest.mark.parametrize("mode", ["interleaved", "proportional", "temperature"])
def test_resume_with_steps_per_epoch_beyond_one_pass(mode):
    for stop in (0, 5, 13, 29):
        check_resume(mode, [4, 3], stop, "dataloader", seed=2, steps_per_epoch=30)


def test_resume_then_next_epoch_continues():
    resumed = check_resume("proportional", [5, 2], 3, "dataloader")
    fresh = make("proportional", [5, 2])
    fresh.set_epoch(1)
    assert [plain(s) for s in resumed] == [plain(s) for s in fresh]


def test_fast_forward_does_not_read_skipped_samples():
    first = make("interleaved", [6, 4], batch_size=2)
    it = iter(first)
    for _ in range(5):  # the small loader is in its second cycle, one batch in
        next(it)
    state = first.state_dict()
    assert state["loaders"]["b"] == {"cycle": 1, "consumed": 1, "state": None}
    loaders = make_loaders([6, 4], batch_size=2)
    resumed = MultiTaskLoader(loaders, mode="interleaved", seed=0)
    resumed.load_state_dict(state)
    list(resumed)
    reads = {t: loaders[t].dataset.reads for t in "ab"}
    assert reads == {"a": 2, "b": 2}  # only the one remaining step was loaded


@pytest.mark.slow
def test_resume_with_worker_processes():
    check_resume("temperature", [5, 3], 4, "dataloader", workers=1, batch_size=2)


@needs_torchdata
def test_stateful_inner_state_is_used():
    first = make("round_robin", [3, 2], kind="stateful")
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    inner = state["loaders"]["a"]["state"]
    assert isinstance(inner, dict) and inner  # the StatefulDataLoader's own state
    assert state["loaders"]["a"]["consumed"] == 2


def test_state_before_iteration_and_after_epoch():
    loader = make("proportional", [3, 2])
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (0, 0)
    list(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (1, 0)


def test_load_state_dict_rejects_mismatch():
    state = make("proportional", [3, 2]).state_dict()
    with pytest.raises(ValueError, match="mode"):
        make("temperature", [3, 2]).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        make("proportional", [3, 2], seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="steps"):
        make("proportional", [3, 3]).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks keys"):
        make("proportional", [3, 2]).load_state_dict({"epoch": 0})
    with pytest.raises(TypeError, match="Mapping"):
        make("proportional", [3, 2]).load_state_dict([1])


def test_set_epoch_to_other_epoch_drops_loaded_state():
    first = make("proportional", [3, 2])
    it = iter(first)
    next(it)
    state = first.state_dict()
    resumed = make("proportional", [3, 2])
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # same epoch: keeps the state
    assert len(list(resumed)) == 4
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # another epoch: starts it from scratch
    assert len(list(resumed)) == 5


def test_resume_leaves_global_rng_alone():
    first = make("weighted", [4, 2])
    it = iter(first)
    next(it)
    resumed = make("weighted", [4, 2])
    resumed.load_state_dict(first.state_dict())
    before = torch.get_rng_state()
    list(resumed)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_earlier_epochs_in_the_same_process(kind):
    """A generator-driven shuffle must not depend on the epochs run before the checkpoint."""

    def build(kind):
        gen = torch.Generator().manual_seed(99)
        cls = StatefulDataLoader if kind == "stateful" else DataLoader
        return MultiTaskLoader(
            {
                "a": cls(Counting(12, 0), batch_size=2, shuffle=True, generator=gen),
                "b": cls(Counting(4, 1000), batch_size=2, shuffle=True),
            },
            mode="weighted",
            weights={"a": 1.0, "b": 0.2},
            seed=5,
        )

    long_run = build(kind)
    for _ in range(2):  # epochs 0 and 1 advance every generator
        list(long_run)
    it = iter(long_run)
    head = [plain(next(it)) for _ in range(2)]
    state = long_run.state_dict()
    rest_uninterrupted = [plain(s) for s in it]
    resumed = build(kind)  # a new process: generators at their initial state
    resumed.load_state_dict(state)
    assert head + [plain(s) for s in resumed] == head + rest_uninterrupted


def test_own_generator_shuffle_is_a_function_of_seed_and_epoch():
    def epoch_items(gen_seed, epoch):
        gen = torch.Generator().manual_seed(gen_seed)
        dl = DataLoader(list(range(8)), batch_size=1, shuffle=True, generator=gen)
        loader = MultiTaskLoader({"a": dl}, mode="interleaved", seed=0)
        loader.set_epoch(epoch)
        return [int(s["a"]) for s in loader]

    assert epoch_items(1, 0) == epoch_items(2, 0)
    assert epoch_items(1, 0) != epoch_items(1, 1)

