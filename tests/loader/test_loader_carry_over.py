"""MultiTaskLoader(carry_over=True): unfinished passes continue into the next epoch."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # pragma: no cover - torchdata is in the test extra
    StatefulDataLoader = None

from mtlkit import MultiTaskLoader

NAMES = "abcd"
CYCLING = [m for m in MultiTaskLoader.modes if m != "sequential"]
sizes_st = st.lists(st.integers(1, 6), min_size=1, max_size=3)


def lists(sizes: list[int]) -> dict[str, list[str]]:
    return {NAMES[t]: [f"{NAMES[t]}{k}" for k in range(n)] for t, n in enumerate(sizes)}


def shuffled(sizes: list[int], kind: str = "dataloader") -> dict[str, DataLoader]:
    cls = StatefulDataLoader if kind == "stateful" else DataLoader
    return {
        NAMES[t]: cls([1000 * t + k for k in range(n)], batch_size=1, shuffle=True)
        for t, n in enumerate(sizes)
    }


def mode_kwargs(mode: str, n_tasks: int) -> dict:
    if mode == "weighted":
        return {"weights": {NAMES[t]: t + 1.0 for t in range(n_tasks)}}
    return {}


def plain(step):
    if isinstance(step, dict):
        return {k: v.tolist() if torch.is_tensor(v) else v for k, v in step.items()}
    return (step[0], step[1].tolist() if torch.is_tensor(step[1]) else step[1])


def per_task(epochs: list[list]) -> dict[str, list]:
    """Each task's batches, in order, over all ``epochs``."""
    out: dict[str, list] = {}
    for steps in epochs:
        for step in steps:
            for task, batch in step.items() if isinstance(step, dict) else [step]:
                out.setdefault(task, []).append(batch)
    return out


# -- against references ----------------------------------------------------------------------
@given(sizes=sizes_st, steps=st.integers(1, 9))
@settings(max_examples=30, deadline=None)
def test_interleaved_and_round_robin_match_endless_cursor_references(sizes, steps):
    """The reference: one endless cursor per task that never resets between epochs."""
    data = lists(sizes)
    for mode in ("interleaved", "round_robin"):
        loader = MultiTaskLoader(data, mode=mode, steps_per_epoch=steps, carry_over=True)
        cursor = dict.fromkeys(data, 0)
        for _ in range(3):
            expected = []
            for k in range(steps):
                tasks = list(data) if mode == "interleaved" else [list(data)[k % len(data)]]
                picked = {}
                for t in tasks:
                    picked[t] = data[t][cursor[t] % len(data[t])]
                    cursor[t] += 1
                expected.append(picked if mode == "interleaved" else (tasks[0], picked[tasks[0]]))
            assert list(loader) == expected


@pytest.mark.parametrize("mode", CYCLING)
@given(sizes=sizes_st, steps=st.integers(1, 13), seed=st.integers(0, 2**20))
@settings(max_examples=12, deadline=None)
def test_every_pass_is_one_whole_shuffle_across_epochs(mode, sizes, steps, seed):
    """Concatenated over epochs, a task's batches are whole passes: each ``n`` consecutive
    batches hold every item once, although epochs end in the middle of passes."""
    loader = MultiTaskLoader(
        shuffled(sizes), mode=mode, seed=seed, steps_per_epoch=steps, carry_over=True,
        **mode_kwargs(mode, len(sizes)),
    )
    epochs = [[plain(s) for s in loader] for _ in range(4)]
    for task, batches in per_task(epochs).items():
        t = NAMES.index(task)
        n = sizes[t]
        items = [b[0] for b in batches]
        for start in range(0, len(items) - n + 1, n):
            assert sorted(items[start : start + n]) == [1000 * t + k for k in range(n)]


def test_without_carry_over_an_unfinished_pass_restarts():
    data = lists([5, 2])
    loader = MultiTaskLoader(data, steps_per_epoch=3)
    assert [s["a"] for s in loader] == [s["a"] for s in loader] == ["a0", "a1", "a2"]
    carried = MultiTaskLoader(data, steps_per_epoch=3, carry_over=True)
    assert [s["a"] for s in carried] + [s["a"] for s in carried] == [
        "a0", "a1", "a2", "a3", "a4", "a0"
    ]


def test_state_at_an_epoch_boundary_holds_the_carried_positions():
    loader = MultiTaskLoader(lists([5, 3]), steps_per_epoch=4, carry_over=True)
    list(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["step"], state["carry_over"]) == (1, 0, True)
    # a: 4 of 5 consumed in pass 0; b: pass 0 done (3), one batch into pass 1
    assert state["loaders"]["a"] == {"cycle": 0, "consumed": 4, "state": None}
    assert state["loaders"]["b"] == {"cycle": 1, "consumed": 1, "state": None}
    list(loader)
    state = loader.state_dict()
    assert state["loaders"]["a"] == {"cycle": 1, "consumed": 3, "state": None}
    assert state["loaders"]["b"] == {"cycle": 2, "consumed": 2, "state": None}


@pytest.mark.parametrize("mode", MultiTaskLoader.modes)
def test_set_epoch_reaches_the_same_epoch_as_iterating(mode):
    """Epoch e of a continuous run equals epoch e of a fresh loader given set_epoch(e): the
    positions are replayed from the lengths and the draws, no data is read."""
    kw = {} if mode == "sequential" else {"steps_per_epoch": 7}

    def make():
        return MultiTaskLoader(
            shuffled([5, 3, 4]), mode=mode, seed=4, carry_over=True, **kw,
            **mode_kwargs(mode, 3),
        )

    continuous = make()
    epochs, states = [], []
    for _ in range(4):
        states.append(continuous.state_dict())
        epochs.append([plain(s) for s in continuous])
    assert epochs[2] != epochs[3]
    for e in (1, 3):
        fresh = make()
        fresh.set_epoch(e)
        assert fresh.state_dict() == states[e]
        assert [plain(s) for s in fresh] == epochs[e]


def test_sequential_carries_nothing_and_reshuffles_every_epoch():
    loader = MultiTaskLoader(shuffled([4, 2]), mode="sequential", seed=1, carry_over=True)
    epochs = [[plain(s) for s in loader] for _ in range(3)]
    for steps in epochs:  # one whole pass of every task per epoch
        assert sorted(b[0] for t, b in steps if t == "a") == [0, 1, 2, 3]
        assert [t for t, _ in steps] == ["a"] * 4 + ["b"] * 2
    assert epochs[0] != epochs[1]


class RecordingSampler(DistributedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)
        super().set_epoch(epoch)


def test_pass_p_gives_the_samplers_set_epoch_p():
    samplers = {n: RecordingSampler(list(range(n)), num_replicas=1, rank=0) for n in (6, 2)}
    loader = MultiTaskLoader(
        {f"t{n}": DataLoader(list(range(n)), sampler=s) for n, s in samplers.items()},
        steps_per_epoch=3,
        carry_over=True,
    )
    for epoch in range(3):
        loader.set_epoch(epoch)  # not forwarded: each pass sets its own sampler epoch
        list(loader)
    assert samplers[6].calls == [0, 1]  # 9 batches: pass 0, pass 1 (3 in)
    assert samplers[2].calls == [0, 1, 2, 3, 4]  # 9 batches of a 2-batch loader: 5 passes


class EpochBatches(Sampler[list[int]]):
    """Batches of ``size`` from a permutation seeded by the epoch (like a length-grouped
    batch sampler): the reference for what pass ``p`` yields."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size, self.epoch = n, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [perm[i : i + self.size] for i in range(0, self.n, self.size)]

    def __iter__(self):
        yield from self.batches(self.epoch)

    def __len__(self) -> int:
        return -(-self.n // self.size)


def test_batch_sampler_with_set_epoch_continues_its_pass():
    sampler = EpochBatches(10, 3)  # 4 batches per pass
    loader = MultiTaskLoader(
        {"a": DataLoader(range(10), batch_sampler=sampler), "b": [0] * 3},
        steps_per_epoch=3,
        carry_over=True,
    )
    seen = [step["a"].tolist() for _ in range(3) for step in loader]
    expected = [b for p in range(3) for b in sampler.batches(p)][:9]
    assert seen == expected


# -- resume ----------------------------------------------------------------------------------
KINDS = ["dataloader", pytest.param("stateful", marks=pytest.mark.skipif(
    StatefulDataLoader is None, reason="torchdata not installed"))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MultiTaskLoader.modes)
@given(sizes=sizes_st, data=st.data())
@settings(max_examples=8, deadline=None)
def test_resume_in_a_later_epoch_equals_uninterrupted(kind, mode, sizes, data):
    steps = None if mode == "sequential" else data.draw(st.integers(1, 9), label="steps")
    seed = data.draw(st.integers(0, 2**20), label="seed")

    def make():
        return MultiTaskLoader(
            shuffled(sizes, kind), mode=mode, seed=seed, steps_per_epoch=steps, carry_over=True,
            **mode_kwargs(mode, len(sizes)),
        )

    full = [[plain(s) for s in loader] for loader in [make()] for _ in range(4)]
    stop_epoch = data.draw(st.integers(0, 2), label="stop_epoch")
    stop = data.draw(st.integers(0, len(full[stop_epoch])), label="stop")
    first = make()
    for _ in range(stop_epoch):
        list(first)
    it = iter(first)
    head = [plain(next(it)) for _ in range(stop)]
    state = first.state_dict()
    if kind == "dataloader":
        state = json.loads(json.dumps(state))
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    rest = [plain(s) for s in resumed]
    assert head + rest == full[stop_epoch]
    assert [[plain(s) for s in resumed] for _ in range(stop_epoch + 1, 4)] == full[
        stop_epoch + 1 :
    ]


def test_carry_over_state_does_not_load_into_a_restarting_loader():
    carried = MultiTaskLoader(lists([3, 2]), carry_over=True)
    with pytest.raises(ValueError, match=r"state_dict\['carry_over'\]: expected False"):
        MultiTaskLoader(lists([3, 2])).load_state_dict(carried.state_dict())


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


def test_carry_over_needs_len_of_every_loader():
    with pytest.raises(ValueError, match=r"loaders: expected len\(\).*carry_over=True.*'a'"):
        MultiTaskLoader({"a": DataLoader(Stream()), "b": [1]}, steps_per_epoch=2, carry_over=True)
