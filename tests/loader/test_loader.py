"""MultiTaskLoader: modes against naive references and hypothesis properties, errors, epochs."""

from __future__ import annotations

import math
import tracemalloc
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from mtlkit import MultiTaskLoader

NAMES = "abcdef"
sizes_st = st.lists(st.integers(1, 7), min_size=1, max_size=4)


def tagged(sizes: list[int], shuffle: bool = True) -> dict[str, DataLoader]:
    """One DataLoader per task, batch size 1, items ``1000 * task + k`` (all distinct)."""
    return {
        NAMES[t]: DataLoader([1000 * t + k for k in range(n)], batch_size=1, shuffle=shuffle)
        for t, n in enumerate(sizes)
    }


def item(batch: torch.Tensor) -> int:
    return int(batch.item())


def assert_cycles(items: list[int], n: int) -> None:
    """``items`` is whole cycles of ``n`` distinct batches (the last one possibly cut short)."""
    for start in range(0, len(items), n):
        chunk = items[start : start + n]
        assert len(set(chunk)) == len(chunk), chunk
        if len(chunk) == n:
            assert len(set(chunk)) == n


def per_task(seq: list[tuple[str, torch.Tensor]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for task, batch in seq:
        out.setdefault(task, []).append(item(batch))
    return out


# -- naive references on unshuffled lists ----------------------------------------------------
@given(sizes=sizes_st)
@settings(max_examples=30, deadline=None)
def test_interleaved_matches_circular_reference(sizes):
    lists = {NAMES[t]: [f"{NAMES[t]}{k}" for k in range(n)] for t, n in enumerate(sizes)}
    loader = MultiTaskLoader(lists, mode="interleaved")
    expected = [{t: b[k % len(b)] for t, b in lists.items()} for k in range(max(sizes))]
    assert len(loader) == max(sizes)
    assert list(loader) == expected


@given(sizes=sizes_st)
@settings(max_examples=30, deadline=None)
def test_round_robin_and_sequential_match_references(sizes):
    lists = {NAMES[t]: [f"{NAMES[t]}{k}" for k in range(n)] for t, n in enumerate(sizes)}
    rr = MultiTaskLoader(lists, mode="round_robin")
    expected = [(t, b[k % len(b)]) for k in range(max(sizes)) for t, b in lists.items()]
    assert len(rr) == len(sizes) * max(sizes)
    assert list(rr) == expected
    seq = MultiTaskLoader(lists, mode="sequential")
    assert len(seq) == sum(sizes)
    assert list(seq) == [(t, x) for t, b in lists.items() for x in b]


# -- properties with shuffling DataLoaders ---------------------------------------------------
@given(sizes=sizes_st, seed=st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_interleaved_exact_epoch(sizes, seed):
    loader = MultiTaskLoader(tagged(sizes), mode="interleaved", seed=seed)
    steps = list(loader)
    assert len(steps) == len(loader) == max(sizes)
    for t, n in enumerate(sizes):
        items = [item(s[NAMES[t]]) for s in steps]
        assert all(set(s) == set(NAMES[: len(sizes)]) for s in steps)
        assert_cycles(items, n)
        if n == max(sizes):  # every batch of the largest loader exactly once
            assert sorted(items) == [1000 * t + k for k in range(n)]


@given(sizes=sizes_st, seed=st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_round_robin_cycles(sizes, seed):
    seq = list(MultiTaskLoader(tagged(sizes), mode="round_robin", seed=seed))
    tasks = [t for t, _ in seq]
    assert tasks == [NAMES[i % len(sizes)] for i in range(len(sizes) * max(sizes))]
    for name, items in per_task(seq).items():
        assert_cycles(items, sizes[NAMES.index(name)])


@given(sizes=sizes_st, seed=st.integers(0, 2**31), repeats=st.integers(1, 3))
@settings(max_examples=25, deadline=None)
def test_proportional_sees_every_batch_once_per_pass(sizes, seed, repeats):
    total = sum(sizes)
    loader = MultiTaskLoader(
        tagged(sizes), mode="proportional", seed=seed, steps_per_epoch=repeats * total
    )
    seq = list(loader)
    assert len(seq) == len(loader) == repeats * total
    everything = sorted(1000 * t + k for t, n in enumerate(sizes) for k in range(n))
    for r in range(repeats):  # each block of sum(n) steps is one full pass over every loader
        block = seq[r * total : (r + 1) * total]
        assert sorted(item(b) for _, b in block) == everything


@pytest.mark.parametrize("mode", ["temperature", "weighted"])
@given(sizes=sizes_st, seed=st.integers(0, 2**31))
@settings(max_examples=20, deadline=None)
def test_independent_modes_cycle_each_task(mode, sizes, seed):
    kw = {"weights": {NAMES[t]: 1.0 for t in range(len(sizes))}} if mode == "weighted" else {}
    loader = MultiTaskLoader(tagged(sizes), mode=mode, seed=seed, **kw)
    seq = list(loader)
    assert len(seq) == len(loader) == sum(sizes)
    for name, items in per_task(seq).items():
        assert_cycles(items, sizes[NAMES.index(name)])


@pytest.mark.parametrize(
    ("mode", "kw", "expected"),
    [
        ("proportional", {}, [0.9, 0.1]),
        ("temperature", {"temperature": 2.0}, [0.75, 0.25]),  # sqrt(9) : sqrt(1)
        ("temperature", {"temperature": 1.0}, [0.9, 0.1]),
        ("weighted", {"weights": {"a": 1.0, "b": 3.0}}, [0.25, 0.75]),
        ("weighted", {"weights": {"a": 0.0, "b": 2.0}}, [0.0, 1.0]),
    ],
)
def test_sampled_frequencies(mode, kw, expected):
    n = 20_000
    lists = {"a": list(range(9)), "b": [0]}
    loader = MultiTaskLoader(lists, mode=mode, seed=3, steps_per_epoch=n, **kw)
    assert loader.probabilities == pytest.approx(dict(zip("ab", expected, strict=True)))
    counts = Counter(t for t, _ in loader)
    for task, p in zip("ab", expected, strict=True):
        sigma = math.sqrt(n * p * (1 - p)) + 1e-9
        assert abs(counts[task] - n * p) <= 5 * sigma + (0 if p in (0, 1) else 1)


# -- determinism, epochs, laziness, memory ---------------------------------------------------
@pytest.mark.parametrize("mode", MultiTaskLoader.modes)
def test_deterministic_by_seed_and_epoch(mode):
    kw = {"weights": {"a": 1, "b": 2, "c": 3}} if mode == "weighted" else {}

    def run(seed, epoch, torch_seed):
        torch.manual_seed(torch_seed)  # the global RNG must not matter
        loader = MultiTaskLoader(tagged([8, 5, 3]), mode=mode, seed=seed, **kw)
        loader.set_epoch(epoch)
        before = torch.get_rng_state()
        out = [
            {k: item(v) for k, v in s.items()} if isinstance(s, dict) else (s[0], item(s[1]))
            for s in loader
        ]
        assert torch.equal(before, torch.get_rng_state())  # and is left untouched
        return out

    assert run(0, 0, 1) == run(0, 0, 2)
    assert run(0, 1, 1) == run(0, 1, 7)
    assert run(0, 0, 1) != run(0, 1, 1)
    assert run(0, 0, 1) != run(5, 0, 1)


def test_epochs_advance_and_differ():
    loader = MultiTaskLoader(tagged([6, 2]), mode="proportional", seed=0)
    first, second = list(loader), list(loader)
    assert loader.epoch == 2
    assert [t for t, _ in first] != [t for t, _ in second]
    loader.set_epoch(1)
    assert [(t, item(b)) for t, b in loader] == [(t, item(b)) for t, b in second]


class RecordingSampler(DistributedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)
        super().set_epoch(epoch)


def test_set_epoch_reaches_distributed_samplers_and_reshuffles_cycles():
    samplers = {
        n: RecordingSampler(list(range(n)), num_replicas=2, rank=0, seed=1) for n in (12, 4)
    }
    dls = {
        f"t{n}": DataLoader(list(range(n)), batch_size=1, sampler=s) for n, s in samplers.items()
    }
    loader = MultiTaskLoader(dls, mode="interleaved")
    loader.set_epoch(3)
    assert all(s.epoch == 3 for s in samplers.values())
    small = [item(step["t4"]) for step in loader]  # 6 steps, the small loader has 2 batches
    stride = 2**32
    assert samplers[4].calls[1:] == [3, 3 + stride, 3 + 2 * stride]
    assert samplers[12].calls[1:] == [3]
    assert set(small[0:2]) == set(small[2:4]) == set(small[4:6])
    assert len(set(small[:2])) == 2


def test_inner_iterators_are_lazy():
    started: list[str] = []

    class Tracked(list):
        def __iter__(self):
            started.append(self[0])
            return super().__iter__()

    loader = MultiTaskLoader({"a": Tracked(["a"] * 3), "b": Tracked(["b"] * 3)}, mode="sequential")
    it = iter(loader)
    assert started == []
    next(it)
    assert started == ["a"]
    list(it)
    assert started == ["a", "b"]


def test_memory_does_not_grow_with_cycles():
    loader = MultiTaskLoader({"big": range(50_000), "small": range(1)}, mode="interleaved")
    tracemalloc.start()
    for _ in loader:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024  # 50 000 restarts of the small loader, nothing kept


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


def test_sequential_accepts_unsized_loaders():
    loader = MultiTaskLoader({"a": DataLoader(Stream(3)), "b": [10, 11]}, mode="sequential")
    with pytest.raises(TypeError, match="len"):
        len(loader)
    assert [(t, int(b)) for t, b in loader] == [("a", 0), ("a", 1), ("a", 2), ("b", 10), ("b", 11)]


def test_unsized_loader_with_steps_per_epoch():
    loader = MultiTaskLoader({"a": DataLoader(Stream(2)), "b": [7]}, steps_per_epoch=5)
    assert [int(s["a"]) for s in loader] == [0, 1, 0, 1, 0]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kw", "error", "match"),
    [
        (({},), {}, ValueError, "empty mapping"),
        (({"a": []},), {}, ValueError, "empty"),
        (({"a": [1]}, "zigzag"), {}, ValueError, "round_robin"),
        (({"a": DataLoader(Stream(2))},), {}, ValueError, "len"),
        (({"a": DataLoader(Stream(2))}, "proportional"), {"steps_per_epoch": 3}, ValueError, "len"),
        (
            ({"a": [1], "b": [2]}, "weighted"),
            {"weights": {"a": 1, "c": 1}},
            ValueError,
            "unknown tasks",
        ),
        (({"a": [1], "b": [2]}, "weighted"), {"weights": {"a": 1}}, ValueError, "missing"),
        (({"a": [1]}, "weighted"), {"weights": {"a": -1}}, ValueError, "weights"),
        (({"a": [1]}, "weighted"), {"weights": {"a": 0}}, ValueError, "all be 0"),
        (({"a": [1]}, "weighted"), {}, ValueError, "weights"),
        (({"a": [1]}, "proportional"), {"weights": {"a": 1}}, ValueError, "weights"),
        (({"a": [1]}, "temperature"), {"temperature": 0}, ValueError, "temperature"),
        (({"a": [1]},), {"temperature": 2.0}, ValueError, "temperature"),
        (({"a": [1]}, "sequential"), {"steps_per_epoch": 3}, ValueError, "steps_per_epoch"),
        (({"a": [1]},), {"steps_per_epoch": 0}, ValueError, "steps_per_epoch"),
        (([("a", [1])],), {}, TypeError, "Mapping"),
        (({1: [1]},), {}, TypeError, "str"),
        (({"a": 3},), {}, TypeError, "iterable"),
        (({"a": [1]}, "interleaved", 1.5), {}, TypeError, "seed"),
    ],
)
def test_bad_input(args, kw, error, match):
    with pytest.raises(error, match=match):
        MultiTaskLoader(*args, **kw)


def test_loader_that_yields_nothing_raises():
    class Liar(list):
        def __len__(self):
            return 3

    loader = MultiTaskLoader({"a": [1, 2], "b": Liar()})
    with pytest.raises(ValueError, match="'b' yielded no batches"):
        list(loader)


def test_set_epoch_rejects_negative():
    with pytest.raises(ValueError, match="epoch"):
        MultiTaskLoader({"a": [1]}).set_epoch(-1)
