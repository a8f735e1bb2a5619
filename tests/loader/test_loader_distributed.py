"""Two gloo ranks: the same task sequence at every step, disjoint data (DistributedSampler)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from gloo_ranks import run_on_ranks
from mtlkit import MultiTaskLoader

SIZES = {"sst": 24, "qqp": 40, "sts": 8}  # items; every size divisible by 2 ranks x batch 2
MODES = ("interleaved", "proportional", "temperature", "round_robin")


def _loaders(rank: int) -> dict[str, DataLoader]:
    out = {}
    for t, (name, n) in enumerate(SIZES.items()):
        items = [1000 * t + k for k in range(n)]
        sampler = DistributedSampler(items, num_replicas=2, rank=rank, shuffle=True, seed=7)
        out[name] = DataLoader(items, batch_size=2, sampler=sampler)
    return out


def _epochs(loader: MultiTaskLoader, epochs: tuple[int, ...], set_epoch: bool = True) -> dict:
    record = {}
    for epoch in epochs:
        if set_epoch:
            loader.set_epoch(epoch)
        steps = []
        for step in loader:
            pairs = step.items() if isinstance(step, dict) else [step]
            steps.append([[task, batch.tolist()] for task, batch in pairs])
        record[epoch] = steps
    return record


def _body(rank: int, world: int) -> dict[str, object]:
    torch.manual_seed(100 + rank)  # ranks' global RNGs differ; the loader must not care
    record: dict[str, object] = {}
    for mode in MODES:
        loader = MultiTaskLoader(_loaders(rank), mode=mode, seed=3)
        for epoch, steps in _epochs(loader, (0, 1)).items():
            record[f"{mode}/{epoch}"] = steps
    carried = MultiTaskLoader(_loaders(rank), mode="interleaved", seed=3, carry_over=True,
                              steps_per_epoch=7)
    for epoch, steps in _epochs(carried, (0, 1, 2), set_epoch=False).items():
        record[f"carry_over/{epoch}"] = steps
    bad = MultiTaskLoader(_loaders(rank), mode="proportional", seed=rank)
    try:
        next(iter(bad))
        record["mismatch"] = "not detected"
    except ValueError as err:
        record["mismatch"] = str(err)
    return record


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_on_ranks(_body, tmp_path_factory.mktemp("loader_ranks"), timeout=180.0)


def _batches(steps: list, name: str) -> list[int]:
    return [x for step in steps for t, b in step if t == name for x in b]


@pytest.mark.slow
def test_two_gloo_ranks_same_tasks_disjoint_data(ranks):
    r0, r1 = ranks
    for key in r0:
        if key == "mismatch":
            continue
        s0, s1 = r0[key], r1[key]
        assert len(s0) == len(s1) > 0, key
        # the same task(s) at every step on both ranks
        assert [[t for t, _ in step] for step in s0] == [[t for t, _ in step] for step in s1]
    for mode in MODES:
        for epoch in (0, 1):
            seen0 = [x for step in r0[f"{mode}/{epoch}"] for _, b in step for x in b]
            seen1 = [x for step in r1[f"{mode}/{epoch}"] for _, b in step for x in b]
            if mode == "proportional":  # one pass over every loader: a partition of the data
                everything = sorted(
                    1000 * t + k for t, n in enumerate(SIZES.values()) for k in range(n)
                )
                assert sorted(seen0 + seen1) == everything
            # a cycle of a DistributedSampler gives the ranks disjoint halves
            first_cycle = {name: n // 4 for name, n in SIZES.items()}
            for name, batches in first_cycle.items():
                b0 = _batches(r0[f"{mode}/{epoch}"], name)[: 2 * batches]
                b1 = _batches(r1[f"{mode}/{epoch}"], name)[: 2 * batches]
                assert set(b0).isdisjoint(b1), (mode, epoch, name)
    assert r0["interleaved/0"] != r0["interleaved/1"]  # set_epoch reshuffled the samplers
    assert "differs across ranks" in r0["mismatch"]
    assert "differs across ranks" in r1["mismatch"]


@pytest.mark.slow
def test_two_gloo_ranks_carry_over_passes_partition_the_data(ranks):
    """carry_over: each pass of a task (one set_epoch(p) of its DistributedSampler) is split
    between the ranks, even when the pass spans two epochs."""
    for name, n in SIZES.items():
        per_pass = n // 4  # batches of 2 per rank
        t = list(SIZES).index(name)
        seq0 = [x for e in (0, 1, 2) for x in _batches(ranks[0][f"carry_over/{e}"], name)]
        seq1 = [x for e in (0, 1, 2) for x in _batches(ranks[1][f"carry_over/{e}"], name)]
        for start in range(0, len(seq0) - 2 * per_pass + 1, 2 * per_pass):  # whole passes
            both = seq0[start : start + 2 * per_pass] + seq1[start : start + 2 * per_pass]
            assert sorted(both) == [1000 * t + k for k in range(n)], (name, start)
